"""The shared daemon end to end: root runs it, two throwaway users (and an admin) use it.

Needs root (to run the daemon as it would run on a box and to create the users); skipped
otherwise. The users exist only for this module and are removed with their processes.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from conftest import DEADLINE_S, poll_until

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
USER_A, USER_B, ADMIN = "ry_test_a", "ry_test_b", "ry_test_adm"
ADMIN_GROUP = "ry-test-admins"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="shared mode starts runs as other users: run the tests as root"
)


def _open_to_others(path: Path) -> bool:
    """Whether any user can read ``path`` (and pass through every folder above it)."""
    try:
        return path.stat().st_mode & 0o004 and all(parent.stat().st_mode & 0o001 for parent in path.parents)
    except OSError:
        return False


def _user_python() -> str | None:
    """This Python if every user can run it, else the system's of the same version (the
    venv's packages are added by path); ``None`` without one."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (PY, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        path = Path(candidate)
        if path.exists() and _open_to_others(path) and _open_to_others(path.resolve()):
            return candidate
    return None


USER_PY = _user_python()
SITE_PACKAGES = next((p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)), "")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _kill_user_processes(uids: set[int]) -> None:
    victims = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]
    for process in victims:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


def _remove_accounts() -> None:
    for name in (USER_A, USER_B, ADMIN):
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        _kill_user_processes({uid})
        subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", ADMIN_GROUP], capture_output=True)


@pytest.fixture(scope="module")
def accounts() -> Iterator[dict[str, pwd.struct_passwd]]:
    if not shutil.which("useradd"):
        pytest.skip("useradd is not installed")
    if USER_PY is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other users may run "
                    f"({PY} is under a private folder): the test users could not run runyard")
    if not _open_to_others(ROOT / "runyard" / "cli.py"):
        pytest.skip(f"{ROOT} is not readable by other users: the test users could not run runyard")
    _remove_accounts()  # left over by a test run that was killed
    try:
        _run("groupadd", "--system", ADMIN_GROUP)
        for name in (USER_A, USER_B, ADMIN):
            _run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
        _run("usermod", "-a", "-G", ADMIN_GROUP, ADMIN)
        yield {name: pwd.getpwnam(name) for name in (USER_A, USER_B, ADMIN)}
    finally:
        _remove_accounts()


@dataclass
class SharedYard:
    root: Path
    accounts: dict[str, pwd.struct_passwd]
    daemon: subprocess.Popen | None = None
    work: dict[str, Path] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "runyard.sock"

    def env(self, name: str | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
            "RUNYARD_HOME": str(self.home), "RUNYARD_SOCKET": str(self.socket),
            "RUNYARD_CONFIG": str(self.root / "config.toml"),
            # The code beside these tests, whichever checkout that is.
            "PYTHONPATH": str(ROOT),
        }
        if name is not None:
            env.update(HOME=str(self.work[name]), USER=name, LOGNAME=name,
                       PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), SITE_PACKAGES))))
        return env

    def cli(self, name: str | None, *args: str, check: bool = True, cwd: Path | None = None,
            umask: int = 0o022) -> subprocess.CompletedProcess:
        """``runyard ARGS`` as user ``name`` (``None``: root)."""
        options = {}
        if name is not None:
            entry = self.accounts[name]
            groups = os.getgrouplist(name, entry.pw_gid)
            options = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=groups, umask=umask)
        result = subprocess.run(
            [USER_PY if name else PY, "-m", "runyard.cli", *args], env=self.env(name), capture_output=True, text=True,
            cwd=str(cwd or (self.work[name] if name else self.root)), timeout=60, **options,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{name}: runyard {' '.join(args)} -> {result.returncode}: {result.stderr}"
                                 f"\ndaemon log: {self.daemon_log()[-3000:]}")
        return result

    def submit(self, name: str, *args: str, **options) -> int:
        return int(self.cli(name, "submit", *args, **options).stdout.strip().splitlines()[-1])

    def show(self, run_id: int) -> dict:
        return json.loads(self.cli(None, "show", str(run_id), "--json").stdout)

    def wait_state(self, run_id: int, *states: str) -> dict:
        seen: dict = {}

        def reached():
            seen.update(self.show(run_id))
            return seen["state"] in states and dict(seen)

        try:
            return poll_until(reached, interval=0.1, message=f"run {run_id} to reach {states}")
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen {seen}; daemon log: {self.daemon_log()[-3000:]}") from None

    def daemon_log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        with open(self.root / "daemon.log", "ab") as log:
            command = [PY, "-m", "runyard.cli", "--daemon", "--shared", "--simulate-gpus", "2x80G"]
            self.daemon = subprocess.Popen(command, env=self.env(),
                                           stdout=log, stderr=log, cwd=str(self.root))

        def ready():
            if self.daemon.poll() is not None:
                raise AssertionError(f"the shared daemon exited with {self.daemon.returncode}: {self.daemon_log()}")
            return self.cli(USER_B, "status", check=False).returncode == 0

        poll_until(ready, message="the shared daemon to answer")

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()


@pytest.fixture
def shared(accounts) -> Iterator[SharedYard]:
    root = Path(tempfile.mkdtemp(prefix="rys-", dir="/tmp"))  # short: a socket path must stay short
    os.chmod(root, 0o755)
    (root / "config.toml").write_text(f'[shared]\nadmin_group = "{ADMIN_GROUP}"\n')
    os.chmod(root / "config.toml", 0o644)
    yard = SharedYard(root, accounts)
    for name, entry in accounts.items():
        work = root / f"work-{name}"
        work.mkdir(mode=0o700)
        os.chown(work, entry.pw_uid, entry.pw_gid)
        yard.work[name] = work
    try:
        yard.start()
        yield yard
    finally:
        yard.stop()
        _kill_user_processes({entry.pw_uid for entry in accounts.values()})
        # The shims are root's; they name their run folder, which is under this root.
        shims = [p for p in psutil.process_iter(["cmdline"])
                 if any(str(root) in part for part in p.info["cmdline"] or [])]
        for process in shims:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(shims, timeout=10)
        shutil.rmtree(root, ignore_errors=True)


REPORT = (
    "import json, os, sys, time\n"
    "mask = os.umask(0); os.umask(mask)\n"
    "print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups()),"
    " 'umask': mask, 'cwd': os.getcwd(), 'secret': os.environ.get('SECRET')}), flush=True)\n"
    "open(os.path.join(os.environ['RUNYARD_CHECKPOINT_DIR'], 'made-by-run'), 'w').close()\n"
    "while not os.path.exists('go'): time.sleep(0.05)\n"
)


def test_each_user_acts_on_their_own_runs_only(shared):
    a, b = shared.accounts[USER_A], shared.accounts[USER_B]
    run_id = shared.submit(USER_A, "--cpus", "0.1", "--mem", "64M", "--env", "SECRET=a-secret", "--name", "a-run",
                           "--", USER_PY, "-c", REPORT, umask=0o022)
    run = shared.wait_state(run_id, "running")
    assert run["user"] == USER_A and run["uid"] == a.pw_uid
    pid = poll_until(lambda: shared.show(run_id)["pid"], message="the run's pid")
    assert psutil.Process(pid).uids().real == a.pw_uid and psutil.Process(pid).uids().effective == a.pw_uid

    # Everyone sees the queue, with names and users, but no environment.
    listed = {item["id"]: item for item in json.loads(shared.cli(USER_B, "ls", "--json").stdout)}
    assert listed[run_id]["user"] == USER_A and listed[run_id]["name"] == "a-run" and "env" not in listed[run_id]

    # B may not act on A's run, nor read what is A's; each refusal says whose it is.
    for args in (["cancel"], ["hold"], ["release"], ["retry"], ["priority", None, "5"], ["logs"], ["show"],
                 ["show", None, "--json"]):
        argv = [part if part is not None else str(run_id) for part in args]
        if None not in args:
            argv.insert(1, str(run_id))
        refused = shared.cli(USER_B, *argv, check=False)
        assert refused.returncode == 1, (argv, refused)
        assert f"run {run_id} belongs to {USER_A}" in refused.stderr and "\n" not in refused.stderr.strip(), refused
        assert "a-secret" not in refused.stdout + refused.stderr
    assert "only ry-test-admins" not in shared.cli(USER_B, "drain", check=False).stderr
    assert "may drain" in shared.cli(USER_B, "drain", check=False).stderr
    # Not even the file: the run's folder is A's alone.
    log_path = Path(run["log_path"])
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(["cat", str(log_path)], user=b.pw_uid, group=b.pw_gid, extra_groups=[], check=True,
                       capture_output=True)

    # A may: its environment, its log.
    own = json.loads(shared.cli(USER_A, "show", str(run_id), "--json").stdout)
    assert own["env"]["SECRET"] == "a-secret"
    poll_until(lambda: "uid" in shared.cli(USER_A, "logs", str(run_id)).stdout, message="the run's report")
    seen = json.loads(shared.cli(USER_A, "logs", str(run_id)).stdout.splitlines()[0])
    assert seen["uid"] == seen["euid"] == a.pw_uid and seen["gid"] == a.pw_gid
    assert seen["groups"] == sorted(os.getgrouplist(USER_A, a.pw_gid))
    assert seen["umask"] == 0o027, oct(seen["umask"])  # the submitter's 022, never open to others
    assert seen["cwd"] == str(shared.work[USER_A]) and seen["secret"] == "a-secret"

    # The run's files are A's and private.
    run_dir, checkpoints = log_path.parent, Path(own["checkpoint_dir"])
    for path, mode in ((run_dir, 0o700), (log_path, 0o600), (checkpoints, 0o700)):
        info = os.stat(path)
        assert (info.st_uid, info.st_gid) == (a.pw_uid, a.pw_gid), path
        assert stat.S_IMODE(info.st_mode) == mode, (path, oct(info.st_mode))
    assert os.stat(checkpoints / "made-by-run").st_uid == a.pw_uid
    assert stat.S_IMODE(os.stat(shared.home / "runyard.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(shared.socket).st_mode) == 0o666

    (shared.work[USER_A] / "go").touch()
    assert shared.wait_state(run_id, "succeeded")["exit_code"] == 0
    # Owner's own actions work: retry it, then cancel the new attempt (which waits for go again).
    (shared.work[USER_A] / "go").unlink()
    shared.cli(USER_A, "retry", str(run_id))
    shared.cli(USER_A, "cancel", str(run_id))
    shared.wait_state(run_id, "cancelled")


def test_admins_act_on_every_run(shared):
    run_id = shared.submit(USER_A, "--hold", "--", USER_PY, "-c", "pass")
    shared.cli(ADMIN, "priority", str(run_id), "7")
    assert "SECRET" not in shared.cli(ADMIN, "show", str(run_id), "--json").stdout
    shared.cli(ADMIN, "cancel", str(run_id))
    assert shared.show(run_id)["state"] == "cancelled"
    shared.cli(ADMIN, "drain")
    shared.cli(None, "undrain")


def test_a_cwd_the_user_cannot_enter_is_refused(shared):
    refused = shared.cli(USER_B, "submit", "--cwd", str(shared.work[USER_A]), "--", USER_PY, "-c", "pass", check=False,
                         cwd=shared.work[USER_B])
    assert refused.returncode == 2, refused
    assert f"{USER_B} cannot enter {shared.work[USER_A]}" in refused.stderr and "--cwd" in refused.stderr
    elsewhere = shared.cli(USER_B, "submit", "--checkpoint-dir", str(shared.work[USER_A] / "ckpt"), "--",
                           USER_PY, "-c", "pass", check=False, cwd=shared.work[USER_B])
    assert elsewhere.returncode == 2, elsewhere
    assert f"cannot enter {shared.work[USER_A]} (Permission denied) for its --checkpoint-dir" in elsewhere.stderr
    assert json.loads(shared.cli(None, "ls", "--json").stdout) == []


def test_a_user_cannot_make_root_write_outside_their_folders(shared):
    outside = Path("/etc") / f"runyard-test-{os.getpid()}"
    # A checkpoint folder anywhere: made as the user, so not under /etc.
    made = shared.submit(USER_A, "--checkpoint-dir", str(outside / "ckpt"), "--", USER_PY, "-c", "pass")
    assert shared.wait_state(made, "succeeded", "failed")
    assert not outside.exists()
    # The run links its next attempt's folder to /etc: the next attempt cannot be prepared
    # there (the shim writes as the user), and nothing is written into /etc.
    link = (
        "import os, sys\n"
        "top = os.path.dirname(os.environ['RUNYARD_RUN_DIR'])\n"
        "if os.environ['RUNYARD_ATTEMPT'] == '1':\n"
        "    os.symlink('/etc', os.path.join(os.environ['RUNYARD_RUN_DIR'], 'attempt-2'))\n"
        "    sys.exit(1)\n"
    )
    run_id = shared.submit(USER_A, "--retries", "1", "--backoff", "0s..0s", "--", USER_PY, "-c", link)
    run = poll_until(lambda: (r := shared.show(run_id))["state"] in ("failed", "succeeded") and r,
                     message="the linked attempt to end")
    assert run["attempt"] == 2 and run["state"] == "failed", run
    assert not Path("/etc/output.log").exists() and not Path("/etc/shim.json").exists()
    assert not Path("/etc/exit.json").exists()


def test_runs_started_as_root_are_refused_for_a_unknown_user(shared):
    """A run queued for no user (a hand-edited row) never starts as root."""
    run_id = shared.submit(USER_A, "--hold", "--", USER_PY, "-c", "pass")
    conn = sqlite3.connect(shared.home / "runyard.db")
    with conn:
        conn.execute("UPDATE runs SET uid = NULL WHERE id = ?", (run_id,))
    conn.close()
    shared.cli(None, "release", str(run_id))
    run = shared.wait_state(run_id, "failed")
    assert "no submitting user" in run["reason"], run


# ------------------------------------------------------------------------- fuzzing


def _exchange(path: Path, payload: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def _hello(path: Path) -> dict:
    answer = json.loads(_exchange(path, b'{"v": 1, "op": "hello", "args": {}}\n').splitlines()[0])
    assert answer["ok"], answer
    return answer["result"]


def test_protocol_fuzz_leaves_the_daemon_serving_and_the_database_intact(shared):
    kept = shared.submit(USER_A, "--hold", "--name", "kept", "--", USER_PY, "-c", "pass")
    path = shared.socket
    cases = [
        b"\n", b"not json\n", b"{\n", b"[1, 2]\n", b'"text"\n', b"null\n", b"\xff\xfe\x00\n",
        b'{"v": 1}\n', b'{"v": 1, "op": 5}\n', b'{"v": 2, "op": "ls"}\n', b'{"v": "1", "op": "ls"}\n',
        b'{"v": 1, "op": "no-such-op", "args": {}}\n', b'{"v": 1, "op": "ls", "args": []}\n',
        b'{"v": 1, "op": "ls", "args": "all"}\n', b'{"v": 1, "op": "ls", "args": {"limit": "x", "after_id": -1}}\n',
        b'{"v": 1, "op": "cancel", "args": {"id": [1]}}\n', b'{"v": 1, "op": "cancel", "args": {"id": {"a": 1}}}\n',
        b'{"v": 1, "op": "cancel", "args": {"id": 1e308}}\n', b'{"v": 1, "op": "cancel", "args": {"id": NaN}}\n',
        b'{"v": 1, "op": "show", "args": {"id": "1; DROP TABLE runs"}}\n',
        b'{"v": 1, "op": "priority", "args": {"id": 1, "priority": Infinity}}\n',
        b'{"v": 1, "op": "submit", "args": {"argv": "rm -rf /", "cwd": "/"}}\n',
        b'{"v": 1, "op": "submit", "args": {"argv": ["true"], "cwd": "/", "env": {"A": 1}}}\n',
        b'{"v": 1, "op": "submit", "args": {"argv": ["true"], "cwd": "/", "envelope": {"mem_bytes": "lots"}}}\n',
        b'{"v": 1, "op": "submit", "args": {"argv": ["true"], "cwd": "/", "umask": "0777", "priority": "high"}}\n',
        b'{"v": 1, "op": "submit_many", "args": {"runs": [1, 2, 3]}}\n',
        b'{"v": 1, "op": "schedule", "args": {"template": [], "cron": 5}}\n',
        b'{"v": 1, "op": "unschedule", "args": {"id": true}}\n',
        b'{"v": 1, "op": "usage", "args": {"id": 1, "max_points": -5}}\n',
        b'{"v": 1, "op": "history", "args": {"since": "yesterday", "max_points": 0}}\n',
        b'{"v": 1, "op": "results", "args": {"group": 7}}\n',
        b"[" * 100_000 + b"\n",  # deeper than the JSON decoder's recursion
        b'{"v": 1, "op": "hello", "args": {}}',  # truncated: no end of line
        b'{"v": 1, "op": "ls", "ar',  # truncated mid-message
    ]
    for payload in cases:
        for line in _exchange(path, payload).splitlines():
            assert set(json.loads(line)) >= {"v", "ok"}, payload[:80]  # an answer, never a traceback
        _hello(path)
    # The same, from an ordinary user: the access checks see every odd shape too.
    (shared.root / "cases.json").write_text(json.dumps([case.hex() for case in cases]))
    os.chmod(shared.root / "cases.json", 0o644)
    script = (
        "import json, socket, sys\n"
        "for case in json.load(open(sys.argv[1])):\n"
        "    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[2])\n"
        "    s.sendall(bytes.fromhex(case)); s.shutdown(socket.SHUT_WR)\n"
        "    data = b''.join(iter(lambda: s.recv(65536), b''))\n"
        "    for line in data.splitlines():\n"
        "        assert {'v', 'ok'} <= set(json.loads(line)), case[:80]\n"
        "    s.close()\n"
    )
    b = shared.accounts[USER_B]
    subprocess.run([USER_PY, "-c", script, str(shared.root / "cases.json"), str(path)], check=True, timeout=60,
                   user=b.pw_uid, group=b.pw_gid, extra_groups=[], cwd=str(shared.work[USER_B]))
    _hello(path)
    # Random damage to valid requests, reproducibly.
    rng = random.Random(9)
    valid = [b'{"v": 1, "op": "ls", "args": {"all": true}}', b'{"v": 1, "op": "show", "args": {"id": 1}}',
             b'{"v": 1, "op": "status", "args": {}}', b'{"v": 1, "op": "cancel", "args": {"id": 99}}']
    for _ in range(150):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[position] = rng.randrange(256)
            elif action < 0.7:
                del data[position]
            else:
                data[position:position] = bytes([rng.randrange(256)])
        _exchange(path, bytes(data) + b"\n")
    _hello(path)
    # An oversized line, and a client that vanishes mid-request.
    _exchange(path, b'{"v": 1, "op": "ls", "args": {"x": "' + b"a" * (17 << 20), read=False)
    _exchange(path, b'{"v": 1, "op": "submit", "args": {"argv": ["tr', read=False)
    # Many connections at once that never finish their line.
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(50)]
    for sock in idle:
        sock.connect(str(path))
        sock.sendall(b'{"v": 1, "op": ')
    try:
        assert _hello(path)["mode"] == "daemon"
    finally:
        for sock in idle:
            sock.close()
    # Still serving every user, still the same queue, and the database is sound.
    assert shared.cli(USER_B, "ls", "--json").returncode == 0
    runs = json.loads(shared.cli(None, "ls", "--json").stdout)
    assert [run["id"] for run in runs] == [kept] and runs[0]["name"] == "kept"
    assert shared.daemon.poll() is None
    conn = sqlite3.connect(shared.home / "runyard.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_health_check_runs_as_the_runs_user(shared):
    a = shared.accounts[USER_A]
    run_id = shared.submit(USER_A, "--health-cmd", "id -u > probe-uid", "--health-interval", "1s", "--",
                           USER_PY, "-c", "import os, time\nwhile not os.path.exists('go'): time.sleep(0.05)")
    shared.wait_state(run_id, "running")
    written = shared.work[USER_A] / "probe-uid"
    poll_until(lambda: written.exists() and written.read_text().strip(), message="the health check to run")
    assert written.read_text().strip() == str(a.pw_uid) and written.stat().st_uid == a.pw_uid
    (shared.work[USER_A] / "go").touch()
    shared.wait_state(run_id, "succeeded")


def test_a_log_replaced_by_a_link_does_not_leak_a_root_file(shared):
    """Five failures in a row pause a group, with the last line of the last log in the
    reason, which everyone sees: a link in place of that log must not be followed."""
    secret = shared.root / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    os.chmod(secret, 0o600)
    swap = (
        "import os, sys\n"
        "log = os.path.join(os.environ['RUNYARD_RUN_DIR'], 'output.log')\n"
        f"os.remove(log); os.symlink({str(secret)!r}, log)\n"
        "sys.exit(1)\n"
    )
    ids = [shared.submit(USER_A, "--group", "leak", "--", USER_PY, "-c", swap) for _ in range(6)]
    for run_id in ids[:5]:
        assert "TOP-SECRET-LINE" not in shared.wait_state(run_id, "failed", "queued")["reason"]
    listing = shared.cli(USER_B, "ls", "--all", "--json").stdout
    assert "TOP-SECRET-LINE" not in listing
    assert "TOP-SECRET-LINE" not in shared.daemon_log()


def test_reservations_belong_to_their_user(shared):
    made = json.loads(shared.cli(USER_A, "reserve", "--gpus", "1", "--for", "1h", "--json").stdout)
    assert made["user"] == USER_A and made["created_by"] == USER_A
    refused = shared.cli(USER_B, "reserve", "--gpus", "1", "--for", "1h", "--user", USER_A, check=False)
    assert refused.returncode == 1 and "only an admin may reserve for another user" in refused.stderr
    refused = shared.cli(USER_B, "unreserve", str(made["id"]), check=False)
    assert refused.returncode == 1 and f"reservation {made['id']} is {USER_A}'s" in refused.stderr
    shared.cli(ADMIN, "unreserve", str(made["id"]))
    assert json.loads(shared.cli(USER_B, "reservations", "--json").stdout) == []
