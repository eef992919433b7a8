"""``runyard install-service``: the systemd units, printed and written."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest


def _cli(yard, *args, env=None):
    return subprocess.run([sys.executable, "-m", "runyard.cli", *args], env=env or yard.env, capture_output=True,
                          text=True, timeout=60, cwd=str(yard.home))


def test_the_system_unit_runs_the_shared_daemon_and_leaves_runs_running(yard):
    env = dict(yard.env)
    env.pop("RUNYARD_HOME")
    env.pop("RUNYARD_CONFIG")
    printed = _cli(yard, "install-service", "--print", env=env)
    assert printed.returncode == 0, printed.stderr
    unit = printed.stdout
    assert f"ExecStart={sys.executable} -m runyard.cli --daemon --shared\n" in unit
    assert "KillMode=process\n" in unit and "WantedBy=multi-user.target\n" in unit
    assert "RuntimeDirectory=runyard\n" in unit and "RuntimeDirectoryMode=0755\n" in unit
    assert "Environment=" not in unit  # nothing set: the system paths


def test_the_user_unit_runs_the_personal_daemon_in_this_home(yard):
    printed = _cli(yard, "install-service", "--user", "--print")
    unit = printed.stdout
    assert f"ExecStart={sys.executable} -m runyard.cli --daemon\n" in unit and "--shared" not in unit
    assert "KillMode=process\n" in unit and "WantedBy=default.target\n" in unit
    assert f"Environment=RUNYARD_HOME={yard.home}\n" in unit


def test_install_service_writes_the_unit_and_says_how_to_enable_it(yard, tmp_path):
    target = tmp_path / "units" / "runyard.service"
    written = _cli(yard, "install-service", "--path", str(target))
    assert written.returncode == 0, written.stderr
    assert f"wrote {target}" in written.stdout and "systemctl enable --now runyard" in written.stdout
    assert "--shared" in target.read_text() and stat.S_IMODE(target.stat().st_mode) == 0o644
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr

    env = dict(yard.env, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    user = _cli(yard, "install-service", "--user", env=env)
    assert user.returncode == 0, user.stderr
    user_unit = tmp_path / "config" / "systemd" / "user" / "runyard.service"
    assert user_unit.exists() and "systemctl --user enable --now runyard" in user.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_unit_that_cannot_be_written_is_one_line_saying_what_to_do(yard):
    refused = _cli(yard, "install-service", "--path", "/proc/runyard.service")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "cannot write /proc/runyard.service" in refused.stderr and "--print" in refused.stderr


def test_install_service_as_root_refuses_a_folder_it_cannot_write(yard):
    refused = _cli(yard, "install-service", "--path", "/proc/self/runyard.service")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "cannot write /proc/self/runyard.service" in refused.stderr
