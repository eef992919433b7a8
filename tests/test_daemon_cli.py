"""The daemon and the CLI end to end: real processes, real SQLite files, real signals."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import threading

import pytest

from conftest import poll_until

PY = sys.executable


def test_run_succeeds_with_output_in_its_log(yard):
    yard.start_daemon()
    run_id = yard.submit("--cpus", "0.1", "--mem", "50M", "--name", "hello", "--",
                         PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)")
    run = yard.wait_state(run_id, "succeeded")
    assert run["exit_code"] == 0 and run["reason"] == "exit code 0", run
    assert run["name"] == "hello" and run["started_at"] <= run["ended_at"], run
    assert "out" in yard.cli("logs", str(run_id)).stdout
    assert "err" in yard.cli("logs", str(run_id)).stdout
    listed = yard.json("ls", "--all")
    assert [r["id"] for r in listed] == [run_id]
    for key in ("id", "name", "state", "reason", "exit_code", "pid", "gpus", "envelope",
                "submitted_at", "started_at", "ended_at", "log_path"):
        assert key in listed[0]


def test_failed_run_records_its_exit_code(yard):
    yard.start_daemon()
    run_id = yard.submit("--cpus", "0.1", "--mem", "50M", "--", PY, "-c", "raise SystemExit(3)")
    run = yard.wait_state(run_id, "failed")
    assert run["exit_code"] == 3 and run["reason"] == "exit code 3", run


def test_run_sees_its_envelope_and_gpus(yard):
    yard.start_daemon("--simulate-gpus", "2x80G")
    script = ("import os, json; print(json.dumps({k: os.environ.get(k) for k in "
              "['RUNYARD_RUN_ID','CUDA_VISIBLE_DEVICES','RUNYARD_CPUS','RUNYARD_MEM_BYTES',"
              "'RUNYARD_GPU_MEM_BYTES','RUNYARD_DEADLINE','CUDA_DEVICE_ORDER']}))")
    run_id = yard.submit("--cpus", "0.5", "--mem", "64M", "--gpus", "1", "--gpu-mem", "10G", "--time", "1h",
                         "--", PY, "-c", script)
    run = yard.wait_state(run_id, "succeeded")
    seen = json.loads(yard.cli("logs", str(run_id)).stdout.strip().splitlines()[-1])
    assert seen["RUNYARD_RUN_ID"] == str(run_id)
    assert seen["CUDA_VISIBLE_DEVICES"] == str(run["gpus"][0])
    assert seen["RUNYARD_CPUS"] == "0.5" and seen["RUNYARD_MEM_BYTES"] == str(64 << 20)
    assert seen["RUNYARD_GPU_MEM_BYTES"] == str(10 << 30)
    assert abs(int(seen["RUNYARD_DEADLINE"]) - (run["started_at"] + 3600)) <= 1
    assert seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    cpu_only = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", script)
    yard.wait_state(cpu_only, "succeeded")
    seen = json.loads(yard.cli("logs", str(cpu_only)).stdout.strip().splitlines()[-1])
    assert seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["RUNYARD_DEADLINE"] is None


def _wait_for_file(path, yard_run_id, yard):
    return poll_until(lambda: path.exists(), message=f"run {yard_run_id} to signal it started")


def test_exclusive_gpus_admit_only_what_fits_and_the_rest_waits(yard, tmp_path):
    yard.start_daemon("--simulate-gpus", "2x80G")
    gate = tmp_path / "go"
    hold = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    ids = [yard.submit("--cpus", "0.1", "--mem", "10M", "--gpus", "1", "--", PY, "-c", hold) for _ in range(3)]
    first, second = (yard.wait_state(run_id, "running") for run_id in ids[:2])
    assert {first["gpus"][0], second["gpus"][0]} == {0, 1}
    waiting = poll_until(lambda: (r := yard.run(ids[2]))["reason"].startswith("waiting: needs") and r,
                         message="the third run's waiting reason")
    assert waiting["state"] == "queued" and "GPU" in waiting["reason"]
    gate.touch()
    assert yard.wait_state(ids[2], "succeeded")["gpus"] in ([0], [1])


def test_refuses_a_run_that_can_never_fit(yard):
    yard.start_daemon("--simulate-gpus", "2x80G")
    result = yard.cli("submit", "--gpus", "3", "--", "true", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "runyard: asks 3 GPUs; this box has 2; nothing was queued"
    assert yard.json("ls", "--all") == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mem", "lots", "--", "true"], "cannot read size 'lots'"),
        (["--mem", "512", "--", "true"], "has no unit"),
        (["--time", "soon", "--", "true"], "cannot read duration"),
        (["--gpus", "1.5", "--", "true"], "--gpus must be a whole number"),
        (["--cpus", "-1", "--", "true"], "--cpus must be a positive number"),
        (["--gpu-mem", "10G", "--", "true"], "--gpu-mem needs --gpus"),
        (["--"], "missing command"),
        ([], "missing command"),
        (["--", "no-such-program-xyz"], "command not found: no-such-program-xyz"),
        (["--env", "NOEQUALS", "--", "true"], "--env 'NOEQUALS': write NAME=VALUE"),
        (["--cwd", "/no/such/dir", "--", "true"], "cwd /no/such/dir is not a directory"),
    ],
)
@pytest.mark.parametrize("with_daemon", [True, False], ids=["daemon", "offline"])
def test_bad_submit_is_one_line_exit_2_and_queues_nothing(yard, args, expected, with_daemon):
    if with_daemon:
        yard.start_daemon()
    result = yard.cli("submit", *args, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert yard.json("ls", "--all") == []


def test_cancel_sends_sigterm_to_the_run(yard, tmp_path):
    yard.start_daemon()
    started = tmp_path / "started"
    script = f"import time; open({str(started)!r}, 'w').close(); time.sleep(600)"
    run_id = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", script)
    poll_until(started.exists, message="the run to start")
    yard.cli("cancel", str(run_id))
    run = yard.wait_state(run_id, "cancelled")
    assert run["signal"] == "SIGTERM" and run["exit_code"] == -signal.SIGTERM, run
    assert run["reason"] == "cancelled by user; killed by SIGTERM", run


def test_cancel_escalates_to_sigkill_after_the_grace_period(yard, tmp_path):
    yard.start_daemon()
    started = tmp_path / "started"
    script = (f"import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('ignoring TERM', flush=True)); "
              f"open({str(started)!r}, 'w').close(); time.sleep(600)")
    run_id = yard.submit("--cpus", "0.1", "--mem", "10M", "--grace", "1s", "--", PY, "-c", script)
    poll_until(started.exists, message="the run to start")
    yard.cli("cancel", str(run_id))
    run = yard.wait_state(run_id, "cancelled")
    assert run["signal"] == "SIGKILL", run
    assert "ignoring TERM" in yard.cli("logs", str(run_id)).stdout


def test_cancel_a_queued_run_and_a_finished_one(yard):
    yard.start_daemon()
    run_id = yard.submit("--hold", "--", "true")
    assert yard.run(run_id)["held"] is True
    out = yard.cli("cancel", str(run_id)).stdout
    assert "cancelled" in out
    again = yard.cli("cancel", str(run_id), check=False)
    assert again.returncode == 1 and "already ended" in again.stderr
    missing = yard.cli("cancel", "999", check=False)
    assert missing.returncode == 3 and missing.stderr.strip() == "runyard: no run 999; `runyard ls --all` lists them"


def test_time_limit_stops_the_run(yard):
    yard.start_daemon()
    run_id = yard.submit("--cpus", "0.1", "--mem", "10M", "--time", "1s", "--grace", "2s",
                         "--", PY, "-c", "import time; time.sleep(600)")
    run = yard.wait_state(run_id, "timed_out")
    assert run["reason"] == "time limit 1s reached; killed by SIGTERM", run
    assert run["ended_at"] - run["started_at"] >= 1.0, run


def test_hold_release_drain_undrain(yard):
    yard.start_daemon()
    held = yard.submit("--cpus", "0.1", "--mem", "10M", "--hold", "--", "true")
    poll_until(lambda: yard.run(held)["reason"].startswith("held"), message="held reason")
    assert yard.run(held)["state"] == "queued"
    yard.cli("drain")
    yard.cli("release", str(held))
    poll_until(lambda: yard.run(held)["reason"].startswith("draining"), message="draining reason")
    assert yard.run(held)["state"] == "queued"
    yard.cli("undrain")
    yard.wait_state(held, "succeeded")
    finished = yard.cli("hold", str(held), check=False)
    assert finished.returncode == 1 and "only queued runs" in finished.stderr


def test_submit_without_a_daemon_queues_and_says_how_to_start_one(yard):
    result = yard.cli("submit", "--cpus", "0.1", "--mem", "10M", "--", PY, "-c", "print('later')")
    run_id = int(result.stdout.strip())
    assert "no engine is running" in result.stderr and "runyard --daemon" in result.stderr
    listed = yard.cli("ls")
    assert "no engine is running" in listed.stderr and str(run_id) in listed.stdout
    assert yard.run(run_id)["state"] == "queued"
    yard.start_daemon()
    yard.wait_state(run_id, "succeeded")
    assert "later" in yard.cli("logs", str(run_id)).stdout


def _submit_many(yard, count: int) -> list[int]:
    results: list = [None] * count

    def one(index: int) -> None:
        results[index] = yard.cli("submit", "--hold", "--name", f"c{index}", "--", "true", check=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    assert not any("locked" in r.stderr for r in results)
    return sorted(int(r.stdout.strip()) for r in results)


@pytest.mark.parametrize("with_daemon", [True, False], ids=["daemon", "offline"])
def test_concurrent_submitters_lose_nothing(yard, with_daemon):
    if with_daemon:
        yard.start_daemon()
    ids = _submit_many(yard, 16)
    assert len(set(ids)) == 16
    runs = yard.json("ls", "--all")
    assert sorted(r["id"] for r in runs) == ids
    assert sorted(r["name"] for r in runs) == sorted(f"c{i}" for i in range(16))
    assert all(r["state"] == "queued" for r in runs)


def test_daemon_killed_with_sigkill_every_run_ends_once_with_its_true_exit_code(yard, tmp_path):
    yard.start_daemon()
    gate = tmp_path / "go"
    ids = {}
    for code in (0, 3, 7):
        script = (f"import os, time, sys\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
                  f"sys.exit({code})")
        ids[code] = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", script)
    killed = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", "import time; time.sleep(600)")
    survivor = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c",
                           f"import os, time, sys\nwhile not os.path.exists({str(gate)!r}+'2'): time.sleep(0.05)\n"
                           "sys.exit(5)")
    for run_id in [*ids.values(), killed, survivor]:
        yard.wait_state(run_id, "running")
    pids = {run_id: poll_until(lambda r=run_id: yard.run(r)["pid"], message="pid") for run_id in [killed]}

    yard.kill_daemon(signal.SIGKILL)
    # While no engine runs: three runs end by themselves, one is killed by a signal.
    gate.touch()
    import os
    os.kill(pids[killed], signal.SIGKILL)
    poll_until(lambda: all((yard.home / "runs" / str(r) / "exit.json").exists() for r in [*ids.values(), killed]),
               message="the runs to end while the daemon is down")
    offline = {r["id"]: r["state"] for r in yard.json("ls", "--all")}
    assert all(offline[r] == "running" for r in [*ids.values(), killed, survivor])

    yard.start_daemon()
    for code, run_id in ids.items():
        run = yard.wait_state(run_id, "succeeded", "failed")
        assert run["exit_code"] == code, run
    assert yard.wait_state(killed, "failed")["signal"] == "SIGKILL"
    assert yard.run(survivor)["state"] == "running"  # re-adopted, still alive
    (tmp_path / "go2").touch()
    assert yard.wait_state(survivor, "failed")["exit_code"] == 5

    conn = sqlite3.connect(yard.home / "runyard.db")
    terminal = conn.execute(
        "SELECT run_id, COUNT(*) FROM transitions WHERE to_state NOT IN ('queued','running') GROUP BY run_id"
    ).fetchall()
    conn.close()
    assert dict(terminal) == {run_id: 1 for run_id in [*ids.values(), killed, survivor]}


def test_sigterm_stops_the_daemon_and_leaves_runs_running(yard, tmp_path):
    yard.start_daemon()
    run_id = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", "import time; time.sleep(600)")
    pid = poll_until(lambda: yard.run(run_id)["pid"], message="the run's pid")
    yard.kill_daemon(signal.SIGTERM)
    import psutil
    assert psutil.pid_exists(pid)
    assert not (yard.home / "runyard.sock").exists()
    yard.start_daemon()
    assert yard.run(run_id)["state"] == "running"
    yard.cli("cancel", str(run_id))
    yard.wait_state(run_id, "cancelled")


def test_a_second_daemon_on_the_same_home_is_refused(yard):
    yard.start_daemon()
    second = yard.cli("--daemon", check=False, timeout=60)
    assert second.returncode == 1
    assert "already serves" in second.stderr and len(second.stderr.strip().splitlines()) == 1


def test_corrupt_database_gives_one_line_and_loses_nothing(yard):
    db = yard.home / "runyard.db"
    db.write_bytes(b"this is not sqlite" * 100)
    before = db.read_bytes()
    for args in (["ls"], ["show", "1"], ["submit", "--", "true"], ["--daemon"]):
        result = yard.cli(*args, check=False)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "move it aside" in lines[0], (args, result.stderr)
    assert db.read_bytes() == before


def test_unknown_run_and_bad_ids(yard):
    yard.start_daemon()
    assert yard.cli("show", "42", check=False).returncode == 3
    bad = yard.cli("show", "abc", check=False)
    assert bad.returncode == 2 and "not a run id" in bad.stderr
    assert yard.cli("logs", "42", check=False).returncode == 3


def test_status_reports_the_box(yard):
    yard.start_daemon("--simulate-gpus", "2x80G,1x24G")
    status = yard.json("status")
    assert status["engine"]["gpu_source"] == "simulated 2x80G,1x24G"
    assert [g["mem_total"] for g in status["gpus"]] == [80 << 30, 80 << 30, 24 << 30]
    assert status["host"]["cpus"] >= 1
    text = yard.cli("status").stdout
    assert "simulated 2x80G,1x24G" in text


def test_logs_follow_prints_until_the_run_ends(yard):
    yard.start_daemon()
    script = "import time\nfor i in range(3):\n    print('tick', i, flush=True); time.sleep(0.2)"
    run_id = yard.submit("--cpus", "0.1", "--mem", "10M", "--", PY, "-c", script)
    out = yard.cli("logs", "-f", str(run_id), timeout=60).stdout
    assert [line for line in out.splitlines() if line.startswith("tick")] == ["tick 0", "tick 1", "tick 2"]
