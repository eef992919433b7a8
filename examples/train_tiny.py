#!/usr/bin/env python3
"""Train a tiny model on synthetic data, checkpointing through ``runyard.checkpoint``.

Kill it at any moment (even SIGKILL) and start it again with the same checkpoint folder: it
resumes from its newest checkpoint and ends with the same weights, bit for bit, as a run
that was never interrupted. The last line it prints is ``final-sha256: <hex>``.

    python examples/train_tiny.py --steps 300 --every 25 --checkpoint-dir /tmp/ck

Under runyard the folder comes from ``RUNYARD_CHECKPOINT_DIR`` and a retried attempt
resumes from ``RUNYARD_RESUME_FROM``; run directly, it needs no runyard daemon.

Why the result is reproducible across restarts:
- each batch is generated from (seed, step) alone, so resuming needs no data iterator;
- everything else that changes while training is in the checkpoint: weights, optimiser
  state, torch's and Python's random number generators, and the step;
- one thread and deterministic algorithms, so the same inputs give the same bits.

SIGTERM (runyard's stop) and SIGUSR1 (runyard's ``--signal USR1@...`` warning before a
time limit) make it checkpoint at the end of the current step and then die of that signal,
so the engine sees it stopped rather than finished.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import time
import warnings
from pathlib import Path

try:
    import runyard
    from runyard import checkpoint
except ImportError:  # run from a checkout where runyard is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import runyard
    from runyard import checkpoint

# A CPU build of torch without numpy warns about it at import; nothing here uses numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402

FEATURES = 16
HIDDEN = 64
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="total training steps (default 300)")
    parser.add_argument("--every", type=int, default=25, help="checkpoint every N steps (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep (default 3)")
    parser.add_argument("--sleep-per-step", type=float, default=0.0, metavar="SECONDS",
                        help="pause after each step, so a test can stop it mid-run")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="used when RUNYARD_CHECKPOINT_DIR is unset (default ./checkpoints)")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.every < 1 or args.keep_last < 1 or args.sleep_per_step < 0:
        parser.error("--steps must be >= 0, --every and --keep-last >= 1, --sleep-per-step >= 0")
    return args


def make_deterministic() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before torch's first parallel work
        pass


def target_weights(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(FEATURES, 1, generator=generator)


def batch_at(seed: int, step: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch for ``step``: a function of (seed, step) only."""
    # Mixing rather than adding keeps (seed 1, step 2) and (seed 2, step 1) apart.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    inputs = torch.randn(BATCH_SIZE, FEATURES, generator=generator)
    targets = torch.tanh(inputs @ weights / FEATURES**0.5) + 0.05 * torch.randn(BATCH_SIZE, 1, generator=generator)
    return inputs, targets


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.Tanh(),
        torch.nn.Dropout(0.1),  # draws from torch's global generator: its state must be resumed too
        torch.nn.Linear(HIDDEN, 1),
    )


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of the weights' exact bits, in name order so it does not depend on how the
    state dict was built."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(bytes(flat.view(torch.uint8).tolist()))
    return digest.hexdigest()


class StopRequest:
    """Remembers a stop signal so the loop can checkpoint at a step boundary before dying."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._remember)

    def _remember(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def die_of_it(self) -> None:
        assert self.signum is not None
        signal.signal(self.signum, signal.SIG_DFL)
        signal.raise_signal(self.signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopRequest()
    make_deterministic()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    weights = target_weights(args.seed)
    model = build_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    start_step = 0

    resumed = checkpoint.load_latest(args.checkpoint_dir)
    if resumed is not None:
        state = resumed.state
        if state["seed"] != args.seed:
            print(f"error: {resumed.path} was trained with --seed {state['seed']}, not {args.seed}", file=sys.stderr)
            return 2
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        start_step = state["step"]
        print(f"resumed from step {start_step} ({resumed.path})", flush=True)

    def save(step: int, loss: float) -> None:
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "step": step,
            "seed": args.seed,
        }
        checkpoint.save(state, step, metrics={"loss": loss}, keep_last=args.keep_last,
                        best_metric="loss", directory=args.checkpoint_dir)

    model.train()
    for step in range(start_step, args.steps):
        inputs, targets = batch_at(args.seed, step, weights)
        # Python's generator drives an input-noise level, so its state matters as much as torch's.
        noise_level = random.uniform(0.0, 0.1)
        noisy_inputs = inputs + noise_level * torch.randn_like(inputs)
        loss = torch.nn.functional.mse_loss(model(noisy_inputs), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        done = step + 1
        runyard.heartbeat(step=done, total=args.steps, metrics={"loss": loss.item()})
        # Read once: a signal landing between the save and the exit must not skip the save.
        stopping = stop.signum is not None
        if done % args.every == 0 or done == args.steps or stopping:
            save(done, loss.item())
            print(f"step {done} loss {loss.item():.6f} checkpointed", flush=True)
        if stopping:
            print(f"stopping at step {done} on {signal.Signals(stop.signum).name}", flush=True)
            stop.die_of_it()
        if args.sleep_per_step:
            time.sleep(args.sleep_per_step)

    print(f"final-sha256: {weights_sha256(model)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
