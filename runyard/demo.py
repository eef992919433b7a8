"""A demo queue for ``runyard --demo``: short runs on simulated GPUs that show packing,
exclusive GPUs, a run that waits for room, a held run and a failure."""

from __future__ import annotations

import os
import sys

from engine.client import Client
from engine.envelope import Envelope

_TRAIN = (
    "import os, time\n"
    "steps = int(os.environ.get('STEPS', '120'))\n"
    "for step in range(1, steps + 1):\n"
    "    print(f'step {step}/{steps} loss {1.0 / step:.4f}', flush=True)\n"
    "    time.sleep(1)\n"
)

DEMO_RUNS = [
    ("sweep-lr-1e-3", Envelope(cpus=0.25, mem_bytes=256 << 20, gpus=1, gpu_mem_bytes=20 << 30, time_limit_s=600), {}, 0),
    ("sweep-lr-1e-4", Envelope(cpus=0.25, mem_bytes=256 << 20, gpus=1, gpu_mem_bytes=20 << 30, time_limit_s=600), {}, 0),
    ("sweep-lr-3e-4", Envelope(cpus=0.25, mem_bytes=256 << 20, gpus=1, gpu_mem_bytes=20 << 30, time_limit_s=600), {}, 0),
    ("pretrain-2gpu", Envelope(cpus=0.25, mem_bytes=512 << 20, gpus=2, time_limit_s=900), {}, 5),
    ("big-4gpu", Envelope(cpus=0.25, mem_bytes=512 << 20, gpus=4, time_limit_s=900), {}, 0),
    ("eval-cpu", Envelope(cpus=0.25, mem_bytes=128 << 20, time_limit_s=300), {"STEPS": "30"}, 0),
    ("broken-run", Envelope(cpus=0.1, mem_bytes=64 << 20, time_limit_s=60), {"STEPS": "oops"}, 0),
]


def submit_demo_runs(client: Client) -> None:
    for name, envelope, env, priority in DEMO_RUNS:
        try:
            client.call(
                "submit", argv=[sys.executable, "-c", _TRAIN], cwd=os.getcwd(), env={**os.environ, **env},
                name=name, priority=priority, envelope=envelope.to_dict(), held=name == "eval-cpu",
            )
        except Exception as error:  # a demo run that cannot be queued is shown, not fatal
            print(f"runyard demo: {name}: {error}", file=sys.stderr)
