"""Provenance: captured from real git repositories, secrets masked, immutable in the
database, drift within a group, final metrics, and rerun; unit, engine and end to end."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import poll_until
from engine import gitfacts, groups, provenance
from engine.model import RunSpec
from engine.probes.gpu import NvmlProbe
from engine.store import sql
from engine.store.schema import migrate
from engine_rig import rig, submit  # noqa: F401 - the fixture
from fake_pynvml import FakeNvml
from runyard import results

PY = sys.executable


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real repository with one commit."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.org")
    git(path, "config", "user.name", "t")
    (path / "train.py").write_text("print('hello')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-qm", "first")
    return path


# ------------------------------------------------------------------------- unit


def test_clean_repository(repo):
    facts, diff = gitfacts.capture_git(str(repo))
    assert facts["commit"] == git(repo, "rev-parse", "HEAD")
    assert (facts["branch"], facts["dirty"], facts["diff_sha256"], facts["untracked_count"]) == ("main", False, None, 0)
    assert diff is None


def test_dirty_repository_hashes_the_diff_against_head(repo):
    (repo / "train.py").write_text("print('changed')\n")
    (repo / "notes.txt").write_text("new\n")
    (repo / "sub").mkdir()
    facts, diff = gitfacts.capture_git(str(repo / "sub"))  # from a subfolder too
    expected = subprocess.run(["git", "-C", str(repo), "diff", "HEAD", "--binary"], capture_output=True).stdout
    assert facts["dirty"] and diff == expected and b"+print('changed')" in diff
    assert facts["diff_sha256"] == hashlib.sha256(expected).hexdigest() and facts["diff_bytes"] == len(expected)
    assert facts["untracked"] == ["notes.txt"] and facts["untracked_count"] == 1


def test_outside_a_repository(tmp_path):
    assert gitfacts.capture_git(str(tmp_path)) == (None, None)


def test_diff_survives_the_request():
    diff = b"binary \xff\x00 bytes\n"
    assert gitfacts.decode_diff(gitfacts.encode_diff(diff)) == diff
    assert gitfacts.decode_diff("not base64!") is None


def test_secret_names_are_masked_as_substrings_in_any_case():
    env = {"HF_TOKEN": "t", "aws_secret_access_key": "k", "DB_PASSWORD": "p", "MyKeyring": "x", "PATH": "/bin"}
    assert provenance.mask_env(env) == {"HF_TOKEN": "***", "aws_secret_access_key": "***", "DB_PASSWORD": "***",
                                        "MyKeyring": "***", "PATH": "/bin"}


def test_the_seal_detects_any_change():
    record = provenance.seal({"argv": ["python", "x.py"], "git": {"commit": "abc"}})
    assert provenance.verify(record)
    assert not provenance.verify({**record, "git": {"commit": "abd"}})


def test_interpreter_from_a_script_shebang_and_the_package_set(tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "torch-2.13.0.dist-info").mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(PY)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.9\n")
    tool = venv / "bin" / "torchrun"
    tool.write_text(f"#!{venv}/bin/python\nimport sys\n")
    tool.chmod(0o755)
    assert provenance.interpreter([str(tool), "train.py"], str(tmp_path), {"PATH": "/usr/bin"}) == f"{venv}/bin/python"
    facts = provenance.python_facts(f"{venv}/bin/python")
    assert (facts["version"], facts["packages"], facts["site_packages"]) == ("3.11.9", 1, [str(site)])
    (site / "numpy-2.0.0.dist-info").mkdir()  # installing a package changes the hash
    again = provenance.python_facts(f"{venv}/bin/python")
    assert again["packages"] == 2 and again["packages_sha256"] != facts["packages_sha256"]


def test_driver_and_cuda_versions_from_nvml():
    fake = FakeNvml()
    fake.nvmlInit()
    fake.nvmlSystemGetCudaDriverVersion = lambda: 12040
    assert NvmlProbe(fake, (), "x").versions() == {"driver": "550.54.15", "cuda": "12.4"}
    del fake.nvmlSystemGetCudaDriverVersion  # old bindings: no CUDA version, and no failure
    assert NvmlProbe(fake, (), "x").versions() == {"driver": "550.54.15", "cuda": None}


def test_drift_names_what_changed():
    base = {"commit": "a" * 40, "diff": None, "packages": "p1", "driver": "550"}
    assert provenance.drift(base, dict(base)) == []
    changed = {"commit": "b" * 40, "diff": "d1", "packages": "p2", "driver": "555"}
    assert provenance.drift(base, changed) == [
        f"commit {'a' * 12} -> {'b' * 12}", "uncommitted changes appeared", "installed packages changed",
        "driver 550 -> 555",
    ]
    assert provenance.drift(base, {**base, "driver": None}) == []  # unknown is not different


def test_report_merges_and_keeps_nan_as_text(tmp_path, monkeypatch):
    assert results.report(loss=1.0) == {"loss": 1.0}  # outside a run: nothing written
    monkeypatch.setenv("RUNYARD_RUN_DIR", str(tmp_path))
    import runyard

    runyard.report(loss=0.25, acc=float("nan"))
    assert runyard.report(best=float("inf")) == {"loss": 0.25, "acc": "nan", "best": "inf"}
    assert json.loads((tmp_path / "report.json").read_text()) == {"loss": 0.25, "acc": "nan", "best": "inf"}
    assert callable(runyard.report)  # importing runyard.results did not shadow the function


# --------------------------------------------------------------------- database


def test_the_database_refuses_to_change_a_record(tmp_path, repo):
    migrate(tmp_path / "runyard.db")
    conn = sql.connect(tmp_path / "runyard.db")
    spec = RunSpec(argv=("true",), cwd=str(repo), env={"API_KEY": "k"})
    spec, _ = provenance.prepare(spec, {}, user="u", gpu=None, runyard_version="0")
    run_id = sql.insert_run(conn, spec, now=1.0, runs_dir=tmp_path / "runs", uid=None, user="u")
    with pytest.raises(sqlite3.IntegrityError, match="provenance is immutable"):
        with sql.write_transaction(conn):
            conn.execute("UPDATE provenance SET record = '{}' WHERE run_id = ?", (run_id,))
    with pytest.raises(sqlite3.IntegrityError, match="provenance is immutable"):
        with sql.write_transaction(conn):
            conn.execute("DELETE FROM provenance WHERE run_id = ?", (run_id,))
    record = sql.get_provenance(conn, run_id)
    assert provenance.verify(record) and record["env"] == {"API_KEY": "***"}
    assert record["git"]["commit"] == git(repo, "rev-parse", "HEAD")  # read by the engine: no client facts
    conn.close()


# ----------------------------------------------------------------------- engine


class VersionedGpus:
    def sample(self):
        return ()

    def versions(self):
        return {"driver": "550.54.15", "cuda": "12.4"}


def test_engine_records_driver_and_flags_drift_in_a_group(rig, tmp_path, repo):  # noqa: F811
    engine, launcher, clock, _ = rig
    engine.gpu_probe = VersionedGpus()
    first = submit(engine, tmp_path, cwd=str(repo), group="g", seed=4)
    (repo / "train.py").write_text("print('changed')\n")
    second = submit(engine, tmp_path, cwd=str(repo), group="g")
    shown = engine.describe(first)
    assert (shown["provenance"]["driver_version"], shown["provenance"]["cuda_version"]) == ("550.54.15", "12.4")
    assert shown["provenance"]["seed"] == 4 and shown["env"]["RUNYARD_SEED"] == "4" and shown["drift"] == []
    assert engine.describe(second)["drift"] == ["uncommitted changes appeared"]
    assert (Path(engine.describe(second)["log_path"]).parent / "git.diff").read_bytes().startswith(b"diff --git")
    rows = groups.results(engine.store.conn, "g")
    assert [row["drift"] for row in rows] == [[], ["uncommitted changes appeared"]]


def test_engine_never_runs_git_in_another_users_tree(rig, tmp_path, repo):  # noqa: F811
    engine, *_ = rig
    request = {"argv": ["/bin/true"], "cwd": str(repo), "env": {}, "envelope": {"mem_bytes": 1 << 30}}
    other = engine.submit(request, uid=os.geteuid() + 1, user="someone")
    git_facts = engine.describe(other.id)["provenance"]["git"]
    assert list(git_facts) == ["error"] and "not read" in git_facts["error"]
    sent = engine.submit({**request, "provenance": {"git": {"commit": "c0ffee"}}}, uid=os.geteuid() + 1, user="x")
    assert engine.describe(sent.id)["provenance"]["git"] == {"commit": "c0ffee"}  # what their client read


def test_final_metrics_are_stored_when_the_attempt_ends(rig, tmp_path):  # noqa: F811
    engine, launcher, clock, _ = rig
    run_id = submit(engine, tmp_path)
    engine.tick()
    run = engine.store.get(run_id)
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.run_dir) / "report.json").write_text('{"loss": 0.5, "acc": "nan"}')
    launcher.exits[run_id] = 0
    engine.tick()
    assert engine.store.get(run_id).metrics == {"loss": 0.5, "acc": "nan"}


# -------------------------------------------------------------------- end to end


def test_submit_records_provenance_and_rerun_reproduces_the_run(yard, repo):
    yard.extra_env.update(MY_API_TOKEN="hunter2", PLAIN="visible")
    yard.start_daemon()
    (repo / "train.py").write_text("print('dirty')\n")
    script = ("import json, os, runyard; print(json.dumps({k: os.environ.get(k) for k in "
              "('RUNYARD_SEED', 'FOO', 'MY_API_TOKEN')})); runyard.report(loss=0.5, acc=float('nan'))")
    run_id = yard.submit("--cpus", "0.1", "--mem", "64M", "--seed", "3", "--env", "FOO=bar", "--cwd", str(repo), "--",
                         PY, "-c", script)
    run = yard.wait_state(run_id, "succeeded")
    seen = json.loads(yard.cli("logs", str(run_id)).stdout.strip().splitlines()[-1])
    assert seen == {"RUNYARD_SEED": "3", "FOO": "bar", "MY_API_TOKEN": "hunter2"}  # the run has the real value
    assert run["metrics"] == {"loss": 0.5, "acc": "nan"} and run["seed"] == 3
    record = run["provenance"]
    assert record["env"]["MY_API_TOKEN"] == "***" and record["env"]["PLAIN"] == "visible"
    assert record["git"]["commit"] == git(repo, "rev-parse", "HEAD") and record["git"]["dirty"]
    assert record["python"]["executable"] == PY and record["python"]["packages_sha256"]
    assert record["driver_version"] is None and record["seed"] == 3 and provenance.verify(record)
    saved = yard.home / "runs" / str(run_id) / "git.diff"
    assert saved.read_bytes() == subprocess.run(["git", "-C", str(repo), "diff", "HEAD", "--binary"],
                                                capture_output=True).stdout
    text = yard.cli("show", str(run_id), "--provenance").stdout
    assert "matches its content" in text and record["git"]["commit"][:12] in text and "MY_API_TOKEN=***" in text
    assert "hunter2" not in text
    assert "metrics" in yard.cli("show", str(run_id)).stdout

    git(repo, "commit", "-qam", "second")
    again = yard.cli("rerun", str(run_id), "--json")
    assert "warning" in again.stderr and "commit" in again.stderr and "git apply" in again.stderr, again.stderr
    new = json.loads(again.stdout)
    assert new["argv"] == run["argv"] and new["cwd"] == run["cwd"] and new["envelope"] == run["envelope"]
    rerun = yard.wait_state(new["id"], "succeeded")
    assert {k: rerun["env"][k] for k in ("FOO", "MY_API_TOKEN", "RUNYARD_SEED")} == \
        {"FOO": "bar", "MY_API_TOKEN": "hunter2", "RUNYARD_SEED": "3"}
    assert json.loads(yard.cli("logs", str(new["id"])).stdout.strip().splitlines()[-1]) == seen
    assert rerun["provenance"]["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    quiet = yard.cli("rerun", str(new["id"]))  # the tree is as that run's record says: no warning
    assert "warning" not in quiet.stderr, quiet.stderr
    poll_until(lambda: yard.run(int(quiet.stdout.strip()))["state"] == "succeeded", message="the last rerun")
