"""Shared mode's pure parts: paths, the fallback client, config, access rules, the shim's options."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from engine import access, shim, userfiles
from engine.client import DaemonUnavailable
from engine.config import ConfigError, load_config
from engine.paths import Home
from engine.protocol import RequestError
from engine.shared import (
    SYSTEM_HOME, SYSTEM_SOCKET, FallbackClient, fallback_socket, run_umask, shared_home,
)
from engine.shared_config import Limits, SharedConfigError, SharedSettings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RUNYARD_HOME", "RUNYARD_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_shared_paths_default_to_the_system_and_follow_the_variables(clean_env, tmp_path):
    home = shared_home()
    assert home.root == SYSTEM_HOME and home.socket_path == SYSTEM_SOCKET
    clean_env.setenv("RUNYARD_SOCKET", str(tmp_path / "s.sock"))
    assert shared_home().socket_path == tmp_path / "s.sock" and shared_home().root == SYSTEM_HOME
    clean_env.setenv("RUNYARD_HOME", str(tmp_path))
    clean_env.delenv("RUNYARD_SOCKET")
    assert shared_home().root == tmp_path and shared_home().socket_path == tmp_path / "runyard.sock"


def test_clients_fall_back_to_the_system_socket_only_when_nothing_is_named(clean_env, tmp_path):
    assert fallback_socket(Home(tmp_path)) == SYSTEM_SOCKET
    clean_env.setenv("RUNYARD_HOME", str(tmp_path))
    assert fallback_socket(Home(tmp_path)) is None
    clean_env.delenv("RUNYARD_HOME")
    clean_env.setenv("RUNYARD_SOCKET", str(tmp_path / "x.sock"))
    assert fallback_socket(Home(tmp_path)) is None


def _serve_once(path: Path, answer: dict) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve():
        connection, _ = server.accept()
        connection.makefile("rb").readline()
        connection.sendall((json.dumps(answer) + "\n").encode())
        connection.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_fallback_client_asks_the_second_socket_when_the_first_has_no_daemon(tmp_path):
    shared = tmp_path / "shared.sock"
    thread = _serve_once(shared, {"v": 1, "ok": True, "result": {"mode": "daemon"}})
    client = FallbackClient(tmp_path / "personal.sock", shared, timeout_s=5)
    assert client.call("hello") == {"mode": "daemon"}
    assert client.socket_path == shared
    thread.join(5)
    with pytest.raises(DaemonUnavailable):
        FallbackClient(tmp_path / "personal.sock", tmp_path / "none.sock").call("hello")


def test_a_runs_umask_never_opens_files_to_others():
    assert run_umask(0o022) == 0o027 and run_umask(0o077) == 0o077 and run_umask(0) == 0o007
    assert run_umask(None) == run_umask("022") == run_umask(True) == run_umask(0o1000) == 0o077


def test_the_shared_table_parses_and_names_the_key_it_refuses(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[shared]\nadmin_group = "ops"\nfair_share_half_life = "3d"\n'
        '[shared.limits]\ngpus = 2\nmem = "64G"\nqueued = 10\n'
        '[shared.users.alice]\ngpus = 4\n'
        '[shared.groups.students]\ncpus = 8\n'
        '[shared.pools.interactive]\ngpus = [1, 0]\nmax_time = "2h"\n'
    )
    settings = load_config(config).shared
    assert settings.admin_group == "ops" and settings.half_life_s == 3 * 86400
    assert settings.limits == Limits(gpus=2, mem_bytes=64 << 30, queued=10)
    assert settings.limits_of_user("alice") == Limits(gpus=4, mem_bytes=64 << 30, queued=10)
    assert settings.limits_of_user("bob") == settings.limits
    assert settings.groups["students"] == Limits(cpus=8.0)
    assert settings.pools["interactive"].gpus == (0, 1) and settings.pools["interactive"].max_time_s == 7200
    for text, key in (('admin_group = 3', "shared.admin_group"), ('color = "red"', "shared.color"),
                      ('[shared.limits]\ngpus = -1', "shared.limits.gpus"),
                      ('[shared.pools.a]\ngpus = [0]\n[shared.pools.b]\ngpus = [0]', "shared.pools.b.gpus"),
                      ('fair_share_half_life = "0s"', "shared.fair_share_half_life")):
        config.write_text("[shared]\n" + text + "\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(config)
    with pytest.raises(SharedConfigError):
        SharedSettings.from_table([])


def _owners(table):
    return lambda key: table.get(key)


def test_only_owners_and_admins_act_on_a_run():
    alice = access.Caller(uid=1001, gid=1001, name="alice", admin=False)
    bob = access.Caller(uid=1002, gid=1002, name="bob", admin=False)
    boss = access.Caller(uid=1003, gid=1003, name="boss", admin=True)
    options = dict(run_owner=_owners({7: (1001, "alice")}), schedule_owner=_owners({2: (1001, "alice")}),
                   admin_group="ops")
    for op in ("cancel", "hold", "release", "retry", "priority", "show"):
        access.check(op, {"id": 7}, alice, **options)
        access.check(op, {"id": "7"}, boss, **options)
        with pytest.raises(RequestError, match="run 7 belongs to alice: only alice or a member of ops may"):
            access.check(op, {"id": 7}, bob, **options)
    access.check("cancel", {"id": 8}, bob, **options)  # no such run: the engine says so
    with pytest.raises(RequestError, match="not a run id"):
        access.check("cancel", {"id": [7]}, bob, **options)
    with pytest.raises(RequestError, match="not a run id"):
        access.check("cancel", {"id": float("inf")}, bob, **options)
    with pytest.raises(RequestError, match="only a member of ops may drain"):
        access.check("drain", {}, bob, **options)
    with pytest.raises(RequestError, match="schedule 2 belongs to alice"):
        access.check("unschedule", {"id": 2}, bob, **options)
    for op in ("ls", "status", "submit", "usage", "history", "hello"):
        access.check(op, {"id": 7}, bob, **options)
    with pytest.raises(RequestError, match="cannot tell who is asking"):
        access.caller_of(None, "ops")
    assert access.caller_of((1, 0, 0), None).admin


def test_the_shim_reads_the_identity_of_a_shared_run():
    run_dir, options, command = shim.parse_args(
        ["/r", "--user", "1001", "--gid", "1002", "--groups", "1002,27", "--umask", "027", "--log", "/r/o.log",
         "--cwd", "/w", "--env-fd", "0", "--mkdir", "/c", "--", "true"]
    )
    identity = options.pop("identity")
    assert (identity.uid, identity.gid, identity.groups, identity.umask) == (1001, 1002, (1002, 27), 0o027)
    assert options == {"log": "/r/o.log", "cwd": "/w", "make_dirs": ("/c",), "env_fd": 0}
    assert run_dir == "/r" and command == ["true"]
    with pytest.raises(ValueError, match="--user needs --gid"):
        shim.parse_args(["/r", "--user", "1", "--", "true"])
    with pytest.raises(ValueError, match="--umask takes a number"):
        shim.parse_args(["/r", "--umask", "9z", "--", "true"])


def test_strict_reads_refuse_links_and_files_of_others(tmp_path):
    target = tmp_path / "target"
    target.write_text("secret")
    link = tmp_path / "link"
    link.symlink_to(target)
    with userfiles.open_run_file(link, None) as file:  # personal: as before
        assert file.read() == b"secret"
    userfiles.set_strict()
    try:
        with pytest.raises(OSError):
            userfiles.open_run_file(link, os.getuid())
        with userfiles.open_run_file(target, os.getuid()) as file:
            assert file.read() == b"secret"
        if os.getuid() != 0:  # root's own files count as the run's
            with pytest.raises(PermissionError):
                userfiles.open_run_file(target, os.getuid() + 1)
        else:
            os.chown(target, 12345, 12345)
            with pytest.raises(PermissionError):
                userfiles.open_run_file(target, 4242)
    finally:
        userfiles.set_strict(False)
