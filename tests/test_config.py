"""The config file: defaults, bad values as one line naming file and key, and its effects
on a real daemon (default envelope, counted resources, headroom, excluded GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import poll_until
from engine.config import Config, ConfigError, load_config

GOOD = """
[engine]
sample_interval = "5s"
mem_headroom = "2G"
gpu_mem_headroom = "1G"
exclude_gpus = [3, 1]

[defaults]
cpus = 0.5
mem = "256M"
time = "12h"

[history]
raw_keep = "30m"
retention = "2d"

[resources]
nfs_io = 4
licence = 1
"""


def test_missing_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNYARD_CONFIG", raising=False)
    assert load_config(tmp_path / "none.toml") == Config()


def test_a_full_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.sample_interval_s == 5 and config.mem_headroom_bytes == 2 << 30
    assert config.gpu_mem_headroom_bytes == 1 << 30 and config.exclude_gpus == (1, 3)
    assert config.default_envelope == {"cpus": 0.5, "mem_bytes": 256 << 20, "time_limit_s": 43200}
    assert config.history_raw_keep_s == 1800 and config.history_retention_s == 2 * 86400
    assert config.resources == (("licence", 1), ("nfs_io", 4))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[engine]\nmem_headroom = 'lots'", "engine.mem_headroom: cannot read size 'lots'"),
        ("[engine]\nsample_interval = '0.01s'", "engine.sample_interval: at least 0.2s"),
        ("[engine]\nexclude_gpus = 'all'", "engine.exclude_gpus: write a list of GPU indices"),
        ("[engine]\nbogus = 1", "engine.bogus: unknown key"),
        ("[defaults]\ncpus = -1", "defaults.cpus: write a positive number"),
        ("[defaults]\ngpus = 1.5", "defaults.gpus: write a whole number"),
        ("[defaults]\ntime = 'soon'", "defaults.time: cannot read duration"),
        ("[resources]\nnfs_io = 0", "resources.nfs_io: write a whole number of at least 1"),
        ("[resources]\n'9lives' = 1", "resources.9lives: a name is letters"),
        ("[nonsense]\na = 1", "unknown table [nonsense]"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_values_are_one_line_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_runyard_config_naming_a_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNYARD_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config()


def _configure(yard, text: str) -> None:
    path = yard.home / "config.toml"
    path.write_text(text)
    yard.extra_env["RUNYARD_CONFIG"] = str(path)


def test_daemon_applies_default_envelope_and_counted_resources(yard):
    _configure(yard, "[defaults]\ncpus = 0.25\nmem = '32M'\ntime = '1h'\n[resources]\nlicence = 1\n")
    yard.start_daemon()
    first = yard.submit("--res", "licence=1", "--", "sleep", "600")
    run = yard.wait_state(first, "running")
    assert run["envelope"]["cpus"] == 0.25 and run["envelope"]["time_limit_s"] == 3600, run
    assert run["envelope"]["resources"] == {"licence": 1}, run
    second = yard.submit("--res", "licence", "--time", "5m", "--", "true")
    poll_until(lambda: yard.run(second)["reason"] == "waiting: needs 1 licence, 0 free",
               message="the second run to wait for the licence")
    unknown = yard.cli("submit", "--res", "gpu_hours=1", "--", "true", check=False)
    assert unknown.returncode == 2
    assert "asks gpu_hours=1; no such resource is configured (configured: licence)" in unknown.stderr
    yard.cli("cancel", str(first))
    yard.wait_state(second, "succeeded")


def test_headroom_shrinks_what_can_be_asked_and_excluded_gpus_disappear(yard):
    _configure(yard, "[engine]\ngpu_mem_headroom = '8G'\nexclude_gpus = [0]\n")
    yard.start_daemon("--simulate-gpus", "2x80G")
    status = yard.json("status")
    assert [gpu["index"] for gpu in status["gpus"]] == [1]
    refused = yard.cli("submit", "--gpus", "1", "--gpu-mem", "75G", "--", "true", check=False)
    assert refused.returncode == 2 and "the largest GPU here has 72G" in refused.stderr
    two = yard.cli("submit", "--gpus", "2", "--", "true", check=False)
    assert two.returncode == 2 and "asks 2 GPUs; this box has 1" in two.stderr


def test_bad_config_stops_the_daemon_and_the_offline_submit_with_one_line(yard):
    _configure(yard, "[defaults]\nmem = 'lots'\n")
    daemon = yard.cli("--daemon", check=False)
    assert daemon.returncode == 2 and "defaults.mem" in daemon.stderr
    assert len(daemon.stderr.strip().splitlines()) == 1
    offline = yard.cli("submit", "--", "true", check=False)
    assert offline.returncode == 2 and "defaults.mem" in offline.stderr


def test_the_readme_config_example_loads(tmp_path) -> None:
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "config.toml"
    path.write_text(example)
    config = load_config(path)
    assert config.resources == (("nfs_io", 4),) and config.exclude_gpus == (3,)
