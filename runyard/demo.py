"""A demo queue for ``runyard --demo``: short runs on simulated GPUs that show packing,
exclusive GPUs, a run that waits for room, a held run, a failure, checkpoints and a
health check."""

from __future__ import annotations

import os
import sys

from engine.envelope import Envelope

_TRAIN = (
    "import os, time, runyard\n"
    "steps = int(os.environ.get('STEPS', '120'))\n"
    "save = os.environ.get('SAVE_EVERY')\n"
    "if save:\n"
    "    from runyard import checkpoint\n"
    "for step in range(1, steps + 1):\n"
    "    loss = 1.0 / step\n"
    "    runyard.heartbeat(step=step, total=steps, metrics={'loss': loss})\n"
    "    print(f'step {step}/{steps} loss {loss:.4f} lr 3e-4 tokens/s {900 + step % 37}', flush=True)\n"
    "    if save and step % int(save) == 0:\n"
    "        checkpoint.save({'step': step}, step, metrics={'loss': loss}, keep_last=3, best_metric='loss')\n"
    "        print(f'saved checkpoint at step {step}', flush=True)\n"
    "    time.sleep(1)\n"
)

_GIB = 1 << 30
_MIB = 1 << 20
DEMO_RUNS = [
    # name, envelope, extra environment, priority, extra request fields
    ("sweep-lr-1e-3", Envelope(cpus=0.25, mem_bytes=256 * _MIB, gpus=1, gpu_mem_bytes=20 * _GIB, time_limit_s=600),
     {"SAVE_EVERY": "15"}, 0, {"health": {"cmd": "true", "interval_s": 5.0}}),
    ("sweep-lr-1e-4", Envelope(cpus=0.25, mem_bytes=256 * _MIB, gpus=1, gpu_mem_bytes=20 * _GIB, time_limit_s=600),
     {}, 0, {}),
    ("sweep-lr-3e-4", Envelope(cpus=0.25, mem_bytes=256 * _MIB, gpus=1, gpu_mem_bytes=20 * _GIB, time_limit_s=600),
     {}, 0, {}),
    ("pretrain-2gpu", Envelope(cpus=0.25, mem_bytes=512 * _MIB, gpus=2, time_limit_s=900),
     {"SAVE_EVERY": "20", "STEPS": "600"}, 5, {}),
    ("big-4gpu", Envelope(cpus=0.25, mem_bytes=512 * _MIB, gpus=4, time_limit_s=900), {}, 0, {}),
    ("eval-cpu", Envelope(cpus=0.25, mem_bytes=128 * _MIB, time_limit_s=300), {"STEPS": "30"}, 0, {"held": True}),
    ("broken-run", Envelope(cpus=0.1, mem_bytes=64 * _MIB, time_limit_s=60), {"STEPS": "oops"}, 0, {}),
]


def submit_demo_runs(client) -> None:
    """Queue the demo runs through ``client`` (any engine client)."""
    for name, envelope, env, priority, extra in DEMO_RUNS:
        try:
            client.call(
                "submit", argv=[sys.executable, "-c", _TRAIN], cwd=os.getcwd(), env={**os.environ, **env},
                name=name, priority=priority, envelope=envelope.to_dict(), **extra,
            )
        except Exception as error:  # a demo run that cannot be queued is shown, not fatal
            print(f"runyard demo: {name}: {error}", file=sys.stderr)
