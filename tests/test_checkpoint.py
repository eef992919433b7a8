"""runyard.checkpoint: atomic saves, pruning, resume order, stdlib-only discovery, and a
training script killed with SIGKILL that still ends with the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest

from runyard import checkpoint

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TINY = ROOT / "examples" / "train_tiny.py"
SHA_PREFIX = "final-sha256: "
DEADLINE_S = 60.0
"""Generous: the test machines are small, shared and noisy."""


@pytest.fixture(autouse=True)
def no_runyard_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite may itself run under runyard; its folders must not leak into these tests.
    monkeypatch.delenv(checkpoint.CHECKPOINT_DIR_ENV, raising=False)
    monkeypatch.delenv(checkpoint.RESUME_FROM_ENV, raising=False)


def steps_in(folder: Path) -> list[int]:
    return [info.step for info in checkpoint.list_checkpoints(folder)]


# --------------------------------------------------------------------------- saving and loading


def test_a_saved_state_comes_back_with_its_record(tmp_path: Path) -> None:
    state = {"weights": [1.5, 2.5], "name": "tiny", "fraction": Fraction(1, 3)}
    path = checkpoint.save(state, 120, epoch=2, metrics={"loss": 0.25, "note": "ok"}, directory=tmp_path)

    assert path.parent == tmp_path and path.name.startswith("ckpt-000000000120-") and path.suffix == ".pkl"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["step"] == 120 and record["epoch"] == 2 and record["payload"] == path.name
    assert record["metrics"] == {"loss": 0.25, "note": "ok"}
    assert record["format"] == "pickle" and record["size_bytes"] == path.stat().st_size
    assert abs(record["saved_at"] - time.time()) < 60

    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None
    assert loaded.state == state
    assert (loaded.step, loaded.epoch, loaded.metrics, loaded.path) == (120, 2, {"loss": 0.25, "note": "ok"}, path)
    assert loaded.saved_at == record["saved_at"]


def test_bytes_are_kept_as_raw_bytes(tmp_path: Path) -> None:
    path = checkpoint.save(b"\x00raw\xff", 1, directory=tmp_path)
    assert path.suffix == ".bin" and path.read_bytes() == b"\x00raw\xff"
    loaded = checkpoint.load(path)
    assert loaded.state == b"\x00raw\xff"


def test_a_torch_state_dict_round_trips_through_the_safe_loader(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    optimiser = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimiser.step()
    state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "rng": torch.get_rng_state()}

    path = checkpoint.save(state, 7, metrics={"loss": torch.tensor(0.5)}, directory=tmp_path)
    assert path.suffix == ".pt"
    loaded = checkpoint.load_latest(tmp_path)

    assert loaded is not None and loaded.metrics == {"loss": 0.5}
    assert loaded.state["model"].keys() == state["model"].keys()
    for name, tensor in state["model"].items():
        assert torch.equal(loaded.state["model"][name], tensor) and loaded.state["model"][name].dtype == tensor.dtype
    assert torch.equal(loaded.state["rng"], state["rng"])
    restored = torch.optim.Adam(model.parameters())
    restored.load_state_dict(loaded.state["optimiser"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimiser.state_dict()["state"][0]["exp_avg"])


def test_torch_payloads_are_loaded_with_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    # A Fraction next to a tensor: pickle could bring it back, the safe loader refuses it.
    path = checkpoint.save({"w": torch.ones(2), "odd": Fraction(1, 3)}, 1, directory=tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.load(path)
    assert checkpoint.load(path, weights_only=False).state["odd"] == Fraction(1, 3)


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    for kwargs in ({"step": -1}, {"step": 1, "keep_last": 0}, {"step": 1, "mode": "lowest"},
                   {"step": 1, "metrics": {"loss": object()}}, {"step": 1, "format": "yaml"}):
        with pytest.raises((ValueError, TypeError)):
            checkpoint.save({"x": 1}, directory=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metrics_are_recorded_as_strict_json_and_never_best(tmp_path: Path) -> None:
    checkpoint.save({}, 1, metrics={"loss": 0.5}, best_metric="loss", directory=tmp_path)
    path = checkpoint.save({}, 2, metrics={"loss": float("nan")}, best_metric="loss", directory=tmp_path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    record = json.loads(path.with_suffix(".json").read_text(), parse_constant=refuse)
    assert record["metrics"] == {"loss": "nan"}
    assert [(info.step, info.is_best) for info in checkpoint.list_checkpoints(tmp_path)] == [(1, True), (2, False)]


# --------------------------------------------------------------------------- atomicity


def test_leftovers_of_an_interrupted_save_are_never_taken_for_a_checkpoint(tmp_path: Path) -> None:
    good = checkpoint.save({"step": 10}, 10, directory=tmp_path)
    # A temporary file, a payload whose record never came, a record whose payload is gone,
    # and a record whose payload is shorter than recorded; all newer than the good one.
    (tmp_path / ".ckpt-000000000050-aaaaaaaa.pkl.999999.tmp").write_bytes(b"half")
    (tmp_path / "ckpt-000000000040-bbbbbbbb.pkl").write_bytes(b"no record")
    orphan_record = json.loads(good.with_suffix(".json").read_text())
    for stem, payload in (("ckpt-000000000030-cccccccc", None), ("ckpt-000000000020-dddddddd", b"short")):
        record = dict(orphan_record, step=int(stem[5:17]), payload=f"{stem}.pkl", saved_at=time.time() + 100)
        (tmp_path / f"{stem}.json").write_text(json.dumps(record))
        if payload is not None:
            (tmp_path / f"{stem}.pkl").write_bytes(payload)
    (tmp_path / "ckpt-000000000060-eeeeeeee.json").write_text('{"version": 1, "step": 6')

    assert steps_in(tmp_path) == [10]
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.path == good and loaded.state == {"step": 10}


def test_a_save_that_dies_before_its_record_leaves_the_previous_checkpoint_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint.save({"step": 1}, 1, directory=tmp_path)
    real_replace = os.replace

    def die_on_record(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if os.fspath(target).endswith(".json"):
            raise KeyboardInterrupt("killed between the payload and its record")
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", die_on_record)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 2}, 2, directory=tmp_path)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)

    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("ckpt-*.pkl")) == ["000000000001", "000000000002"]
    assert not list(tmp_path.glob(".*.tmp"))  # the failed write removed its temporary file
    assert steps_in(tmp_path) == [1]
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.state == {"step": 1}


def test_the_next_save_sweeps_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    abandoned = tmp_path / f".ckpt-000000000005-aaaaaaaa.pt.{dead_pid}.tmp"
    abandoned.write_bytes(b"half")
    live = tmp_path / f".ckpt-000000000006-bbbbbbbb.pt.{os.getppid()}.tmp"
    live.write_bytes(b"still being written")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine")

    checkpoint.save({}, 7, directory=tmp_path)
    assert not abandoned.exists()
    assert live.exists() and unrelated.exists()


# --------------------------------------------------------------------------- keeping


def test_pruning_keeps_the_last_k_and_the_best(tmp_path: Path) -> None:
    losses = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.4, 5: 0.3, 6: 0.35, 7: 0.2, 8: 0.25}
    for step, loss in losses.items():
        checkpoint.save({"s": step}, step, metrics={"loss": loss}, keep_last=3, best_metric="loss", directory=tmp_path)
        found = checkpoint.list_checkpoints(tmp_path)
        assert [info.step for info in found if info.is_best] == [min(list(losses)[:step], key=losses.get)]
    assert steps_in(tmp_path) == [2, 6, 7, 8]
    assert len(list(tmp_path.iterdir())) == 8  # payload and record of each, nothing else


def test_pruning_by_a_higher_is_better_metric(tmp_path: Path) -> None:
    for step, accuracy in enumerate([0.5, 0.9, 0.6, 0.7, 0.8], start=1):
        checkpoint.save({}, step, metrics={"acc": accuracy}, keep_last=2, best_metric="acc", mode="max",
                        directory=tmp_path)
    found = checkpoint.list_checkpoints(tmp_path)
    assert [(info.step, info.is_best) for info in found] == [(2, True), (4, False), (5, False)]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock steps back between saves, so the newest save sorts as the oldest.
    clock = iter([1000.0, 2000.0, 3000.0, 500.0] + [10_000.0] * 20)
    monkeypatch.setattr(checkpoint, "time", SimpleNamespace(time=lambda: next(clock)))
    for step in (1, 2, 3):
        checkpoint.save({}, step, keep_last=2, directory=tmp_path)
    latest = checkpoint.save({}, 4, keep_last=2, directory=tmp_path)
    assert latest.exists() and 4 in steps_in(tmp_path)


def test_keep_last_none_keeps_everything(tmp_path: Path) -> None:
    for step in range(5):
        checkpoint.save({}, step, keep_last=None, directory=tmp_path)
    assert steps_in(tmp_path) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- where and what to resume


def test_load_latest_prefers_runyard_resume_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert checkpoint.load_latest(tmp_path) is None
    older = checkpoint.save({"at": 10}, 10, directory=tmp_path)
    checkpoint.save({"at": 20}, 20, directory=tmp_path)

    monkeypatch.setenv(checkpoint.RESUME_FROM_ENV, str(older))
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and (loaded.step, loaded.state) == (10, {"at": 10})

    monkeypatch.setenv(checkpoint.RESUME_FROM_ENV, str(older.with_suffix(".json")))
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.step == 10

    # One that is gone (pruned, or never completed) gives way to the newest in the folder.
    monkeypatch.setenv(checkpoint.RESUME_FROM_ENV, str(tmp_path / "ckpt-000000000015-00000000.pt"))
    with pytest.warns(UserWarning, match="not a complete checkpoint"):
        loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.step == 20


def test_the_folder_comes_from_runyard_then_the_argument_then_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default_path = checkpoint.save({}, 1)
    assert default_path.parent.resolve() == tmp_path / "checkpoints"

    assert checkpoint.save({}, 2, directory=tmp_path / "mine").parent == tmp_path / "mine"

    engine_folder = tmp_path / "from-engine"
    monkeypatch.setenv(checkpoint.CHECKPOINT_DIR_ENV, str(engine_folder))
    assert checkpoint.save({}, 3).parent == engine_folder
    with pytest.warns(UserWarning, match=checkpoint.CHECKPOINT_DIR_ENV):
        assert checkpoint.save({}, 4, directory=tmp_path / "somewhere-else").parent == engine_folder
    loaded = checkpoint.load_latest()
    assert loaded is not None and loaded.step == 4
    # The engine names its folder: list_checkpoints never looks at the environment.
    assert steps_in(tmp_path / "mine") == [2]


def test_list_checkpoints_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert checkpoint.list_checkpoints(tmp_path / "nothing-here") == []


def test_discovery_and_plain_states_need_only_the_standard_library(tmp_path: Path) -> None:
    """What the engine does (import, list) and a state without tensors never load torch,
    engine or anything outside the standard library."""
    pytest.importorskip("torch")
    import torch

    checkpoint.save({"w": torch.zeros(3)}, 5, metrics={"loss": 1.0}, best_metric="loss", directory=tmp_path)
    code = f"""
import json, sys
before = set(sys.modules)
import runyard.checkpoint as checkpoint
found = checkpoint.list_checkpoints({str(tmp_path)!r})
checkpoint.save({{"plain": [1, 2]}}, 6, directory={str(tmp_path / "plain")!r})
loaded = checkpoint.load_latest({str(tmp_path / "plain")!r})
new = sorted({{name.partition(".")[0] for name in set(sys.modules) - before}})
print(json.dumps({{"new": new, "stdlib": sorted(sys.stdlib_module_names),
                  "found": [[i.step, i.size_bytes, i.is_best, i.format] for i in found],
                  "loaded": loaded.state}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE_S,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    size = checkpoint.list_checkpoints(tmp_path)[0].size_bytes
    assert report["found"] == [[5, size, True, "torch"]]
    assert report["loaded"] == {"plain": [1, 2]}
    outside_stdlib = set(report["new"]) - set(report["stdlib"]) - {"runyard"}
    assert outside_stdlib == set(), outside_stdlib
    assert "torch" not in report["new"] and "engine" not in report["new"]


# --------------------------------------------------------------------------- end to end


def final_sha(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    assert lines and lines[-1].startswith(SHA_PREFIX), f"last lines: {lines[-3:]}"
    return lines[-1][len(SHA_PREFIX):]


def wait_for(predicate, message: str, process: subprocess.Popen | None = None, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {message}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)
    return value


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=DEADLINE_S)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def test_a_run_killed_twice_and_restarted_ends_with_the_same_weights(
    tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    steps, every = 200, 10
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}

    def start(folder: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(TRAIN_TINY), "--steps", str(steps), "--every", str(every),
                   "--checkpoint-dir", str(folder), *extra]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, cwd=tmp_path)
        processes.append(process)
        return process

    def newest_step(folder: Path) -> int:
        return max(steps_in(folder), default=0)

    # The uninterrupted reference runs alongside: the result must not depend on timing.
    reference = start(tmp_path / "reference")
    folder = tmp_path / "killed"
    resumed_at: list[int] = []
    for kill_after_step in (60, 140):
        run = start(folder, "--sleep-per-step", "0.01")
        wait_for(lambda: newest_step(folder) >= kill_after_step, f"a checkpoint at step {kill_after_step}", run)
        run.send_signal(signal.SIGKILL)
        killed_out, _ = run.communicate(timeout=DEADLINE_S)
        assert run.returncode == -signal.SIGKILL
        if resumed_at:
            assert f"resumed from step {resumed_at[-1]} " in killed_out, killed_out[:500]
        resumed_at.append(newest_step(folder))

    last = start(folder, "--sleep-per-step", "0.01")
    out, err = last.communicate(timeout=DEADLINE_S * 2)
    assert last.returncode == 0, err[-2000:]
    # It really resumed: from the newest checkpoint the second killed run left.
    assert f"resumed from step {resumed_at[-1]} " in out, out[:500]

    reference_out, reference_err = reference.communicate(timeout=DEADLINE_S * 2)
    assert reference.returncode == 0, reference_err[-2000:]
    assert "resumed" not in reference_out
    assert final_sha(out) == final_sha(reference_out)
    assert resumed_at[0] >= 60 and resumed_at[1] >= 140
    assert steps_in(folder)[-1] == steps
