"""Admission policy: ordering, packing, refusal, reasons, and backfill that never delays a reservation.

Examples pin behaviour and wording; Hypothesis properties check the invariants on random
boxes against a small independent oracle written here (not the policy's own bookkeeping).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import policy
from engine.envelope import Envelope
from engine.policy import (
    IDLE_GPU_MEM_BYTES,
    MAX_RESERVATIONS,
    BoxView,
    Decision,
    GpuView,
    Holding,
    QueuedRun,
    Start,
    decide,
    never_fits,
    queue_order,
)

G = 1 << 30
M = 1 << 20
NOW = 1_000_000.0
HOUR = 3600.0


def card(index: int, total_gb: float = 80, *, foreign_gb: float = 0, procs: int = 0, available: bool = True) -> GpuView:
    return GpuView(
        index=index,
        mem_total=int(total_gb * G),
        mem_foreign=int(foreign_gb * G),
        foreign_procs=procs,
        available=available,
        unavailable_reason=None if available else "lost",
    )


def make_box(gpus: int | tuple[GpuView, ...] = 0, *, cpus: float = 16, mem_gb: float = 128, **kwargs) -> BoxView:
    cards = tuple(card(i) for i in range(gpus)) if isinstance(gpus, int) else gpus
    return BoxView(cpus=cpus, mem_total=int(mem_gb * G), gpus=cards, **kwargs)


def env(**kwargs) -> Envelope:
    """An envelope with sizes in GiB: ``env(mem=4, gpu_mem=10, disk=1, time=HOUR, res={"nfs_io": 1})``."""
    sizes = {"mem": "mem_bytes", "gpu_mem": "gpu_mem_bytes", "disk": "disk_bytes"}
    fields = {sizes.get(key, key): int(value * G) if key in sizes else value for key, value in kwargs.items()}
    if "time" in fields:
        fields["time_limit_s"] = fields.pop("time")
    if "res" in fields:
        fields["resources"] = fields.pop("res")
    return Envelope(**fields)


def queued(run_id: int, *, priority: int = 0, at: float | None = None, held: bool = False, **envelope) -> QueuedRun:
    submitted = float(run_id) if at is None else at
    return QueuedRun(run_id, env(**envelope), priority=priority, submitted_at=submitted, held=held)


def holding(run_id: int, *, on: tuple[int, ...] = (), ends_in: float | None = None, **envelope) -> Holding:
    """A running run holding ``envelope`` on cards ``on``, ending ``ends_in`` seconds from NOW."""
    end = None if ends_in is None else NOW + ends_in
    return Holding(run_id, env(**envelope), gpus=on, expected_end=end)


def started(decision: Decision) -> list[int]:
    return [start.run_id for start in decision.starts]


# --- order -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runs", "first"),
    [
        pytest.param([queued(1, priority=0), queued(2, priority=5)], 2, id="priority-beats-age"),
        pytest.param([queued(1, at=20.0), queued(2, at=10.0)], 2, id="fifo-within-priority"),
        pytest.param([queued(7, at=10.0), queued(3, at=10.0)], 3, id="lower-id-breaks-ties"),
        pytest.param([queued(1, priority=-1), queued(2)], 2, id="negative-priority-last"),
    ],
)
def test_order_decides_who_gets_the_only_slot(runs, first):
    box = make_box(cpus=1)
    decision = decide(runs, [], box, NOW)
    assert started(decision) == [first]
    assert set(decision.waiting) == {run.run_id for run in runs} - {first}


def test_starts_are_listed_in_queue_order():
    runs = [queued(1, at=3.0), queued(2, priority=1, at=9.0), queued(3, at=1.0)]
    assert started(decide(runs, [], make_box(), NOW)) == [2, 3, 1]
    assert sorted(runs, key=queue_order) == [runs[1], runs[2], runs[0]]


def test_greedy_starts_several_and_subtracts_each():
    runs = [queued(i, cpus=1.5, mem=1) for i in (1, 2, 3)]
    decision = decide(runs, [], make_box(cpus=4), NOW)
    assert started(decision) == [1, 2]
    assert decision.waiting == {3: "waiting: needs 1.5 CPUs, 1 free"}


def test_duplicate_run_ids_are_a_clear_error():
    with pytest.raises(ValueError, match="same run id twice"):
        decide([queued(1), queued(1)], [], make_box(), NOW)


# --- refusal -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "box", "reason"),
    [
        (env(gpus=3), make_box(2), "asks 3 GPUs; this box has 2"),
        (env(gpus=1), make_box(0), "asks 1 GPU; this box has 0"),
        (env(gpus=3), make_box(0), "asks 3 GPUs; this box has 0"),
        (env(gpus=1, gpu_mem=100), make_box(2), "asks 100G per GPU; the largest GPU here has 80G"),
        (
            env(gpus=2, gpu_mem=40),
            make_box((card(0, 80), card(1, 24))),
            "asks 2 GPUs with 40G each; only 1 GPU here has that much",
        ),
        (env(cpus=64), make_box(cpus=2), "asks 64 CPUs; this box has 2"),
        (env(cpus=2.5), make_box(cpus=2), "asks 2.5 CPUs; this box has 2"),
        (env(mem=64), make_box(mem_gb=23.4), "asks 64G memory; this box has 23.4G"),
        # Things that change are reasons to wait, never to refuse:
        (env(disk=1024), make_box(disk_free=80 * G), None),
        (env(gpus=2), make_box((card(0), card(1, available=False))), None),
        (env(gpus=1, gpu_mem=10), make_box((card(0, foreign_gb=79),)), None),
        (env(mem=60), make_box(mem_gb=64, mem_foreign=50 * G), None),
        (env(cpus=2, mem=64, gpus=2, gpu_mem=80), make_box(2, cpus=2, mem_gb=64), None),
        # A card NVML cannot size (0 bytes) might be big enough once readable.
        (env(gpus=1, gpu_mem=40), make_box((card(0, 0, available=False),)), None),
        (env(res={"nfs_io": 4}), make_box(counted=(("nfs_io", 4),)), None),
        (env(res={"nfs_io": 5}), make_box(counted=(("nfs_io", 4),)), "asks nfs_io=5; this box has 4"),
        (env(res={"nfs_io": 1}), make_box(counted=(("nfs_io", 0),)), "asks nfs_io=1; this box has 0"),
        (
            env(res={"db": 1}),
            make_box(counted=(("nfs_io", 4), ("licence", 1))),
            "asks db=1; no such resource is configured (configured: licence, nfs_io)",
        ),
        (env(res={"nfs_io": 1}), make_box(), "asks nfs_io=1; no such resource is configured (none configured)"),
        (
            env(res={"licence": 2, "nfs_io": 9}),
            make_box(counted=(("licence", 1), ("nfs_io", 4))),
            "asks licence=2; this box has 1",
        ),
        # Resources held by running runs change; a busy resource is a reason to wait.
        (env(cpus=2, res={"nfs_io": 4}), make_box(cpus=2, counted=(("nfs_io", 4),)), None),
    ],
)
def test_never_fits(envelope, box, reason):
    assert never_fits(envelope, box) == reason


def test_refused_runs_are_reported_apart_and_block_nothing():
    runs = [queued(1, priority=9, gpus=4), queued(2, held=True, cpus=64), queued(3, gpus=1)]
    decision = decide(runs, [], make_box(1), NOW)
    assert decision.refused == {1: "asks 4 GPUs; this box has 1", 2: "asks 64 CPUs; this box has 16"}
    assert decision.starts == (Start(3, (0,)),)
    assert decision.waiting == {}


# --- held and draining ---------------------------------------------------------------------


def test_held_runs_never_start_and_block_nothing():
    runs = [queued(12, priority=9, held=True, gpus=1), queued(13, gpus=1)]
    decision = decide(runs, [], make_box(1), NOW)
    assert decision.starts == (Start(13, (0,)),)
    assert decision.waiting == {12: "held: release it with `runyard release 12`"}


def test_draining_starts_nothing_and_says_why():
    runs = [queued(1), queued(2, held=True), queued(3, gpus=9)]
    decision = decide(runs, [], make_box(1), NOW, draining=True)
    assert decision.starts == ()
    assert decision.waiting == {
        1: "draining: the engine admits nothing new (runyard undrain)",
        2: "held: release it with `runyard release 2`",
    }
    assert decision.refused == {3: "asks 9 GPUs; this box has 1"}


# --- what is free ------------------------------------------------------------------------------


def test_cpu_load_of_others_is_not_counted_but_their_memory_is():
    box = make_box(cpus=4, mem_gb=32, mem_foreign=20 * G)
    decision = decide([queued(1, cpus=4, mem=12), queued(2, mem=1)], [], box, NOW)
    assert started(decision) == [1]
    assert decision.waiting == {2: "waiting: needs 1 CPU, 0 free"}


def test_holdings_take_cpus_memory_and_disk():
    box = make_box(cpus=8, mem_gb=64, disk_free=100 * G)
    held = [holding(90, cpus=6, mem=40, disk=70)]
    runs = [
        queued(1, cpus=3),
        queued(2, cpus=1, mem=30),
        queued(3, cpus=1, mem=1, disk=40),
        queued(4, cpus=1, mem=1, disk=20),
    ]
    decision = decide(runs, held, box, NOW)
    assert started(decision) == [4]
    assert decision.waiting == {
        1: "waiting: needs 3 CPUs, 1 free",
        2: "waiting: needs 30G memory, 23G free",
        3: "waiting: needs 40G disk, 10G free",
    }


def test_holding_on_a_card_the_box_no_longer_shows_still_takes_cpus():
    held = [holding(90, cpus=2, gpus=1, on=(7,))]
    decision = decide([queued(1, cpus=1, gpus=1)], held, make_box(1, cpus=2), NOW)
    assert decision.waiting == {1: "waiting: needs 1 CPU, 0 free"}


# --- named counted resources ----------------------------------------------------------------


def test_holdings_and_this_calls_starts_consume_counted_resources():
    box = make_box(counted=(("licence", 1), ("nfs_io", 4)))
    held = [holding(90, res={"nfs_io": 2})]
    runs = [queued(1, res={"nfs_io": 1}), queued(2, res={"nfs_io": 2}), queued(3, res={"licence": 1})]
    runs.append(queued(4, res={"licence": 1, "nfs_io": 1}))
    decision = decide(runs, held, box, NOW)
    assert started(decision) == [1, 3]
    assert decision.waiting == {2: "waiting: needs 2 nfs_io, 1 free", 4: "waiting: needs 1 licence, 0 free"}


def test_a_counted_resource_limits_runs_that_otherwise_fit():
    runs = [queued(i, cpus=0.5, mem=0.5, res={"licence": 1}) for i in (1, 2, 3)]
    decision = decide(runs, [], make_box(counted=(("licence", 2),)), NOW)
    assert started(decision) == [1, 2]
    assert decision.waiting == {3: "waiting: needs 1 licence, 0 free"}


def test_runs_asking_an_unconfigured_resource_are_refused_and_block_nothing():
    runs = [queued(1, priority=9, res={"db": 1}), queued(2, res={"nfs_io": 1})]
    decision = decide(runs, [], make_box(counted=(("nfs_io", 1),)), NOW)
    assert decision.refused == {1: "asks db=1; no such resource is configured (configured: nfs_io)"}
    assert started(decision) == [2]


def test_a_holding_of_a_resource_the_config_dropped_or_shrank():
    # The config went from nfs_io = 4 and a licence to nfs_io = 1 while runs held them.
    held = [holding(90, res={"licence": 1, "nfs_io": 3})]
    box = make_box(counted=(("nfs_io", 1),))
    decision = decide([queued(1, res={"nfs_io": 1}), queued(2, cpus=1)], held, box, NOW)
    assert started(decision) == [2]
    assert decision.waiting == {1: "waiting: needs 1 nfs_io, 0 free"}


def test_runs_that_differ_only_in_resources_are_judged_apart():
    held = [holding(90, res={"licence": 1})]
    runs = [queued(1, cpus=2, res={"licence": 1}), queued(2, cpus=2)]
    decision = decide(runs, held, make_box(counted=(("licence", 1),)), NOW)
    assert started(decision) == [2]


@pytest.mark.parametrize(
    ("run", "held", "reason"),
    [
        pytest.param(
            queued(1, cpus=1, gpus=1, res={"nfs_io": 1}),
            [holding(90, on=(0,), gpus=1, res={"nfs_io": 2})],
            "waiting: needs 1 GPU, 0 free",
            id="gpus-first",
        ),
        pytest.param(
            queued(1, cpus=4, res={"nfs_io": 1}),
            [holding(90, cpus=14, res={"nfs_io": 2})],
            "waiting: needs 4 CPUs, 2 free",
            id="cpus-before-counted",
        ),
        pytest.param(
            queued(1, disk=20, res={"nfs_io": 1}),
            [holding(90, res={"nfs_io": 2})],
            "waiting: needs 20G disk, 3G free",
            id="disk-before-counted",
        ),
    ],
)
def test_counted_resources_are_named_after_the_others(run, held, reason):
    box = make_box(1, cpus=16, disk_free=3 * G, counted=(("nfs_io", 2),))
    assert decide([run], held, box, NOW).waiting == {1: reason}


def head_waiting_for_nfs_io() -> tuple[list[QueuedRun], list[Holding], BoxView]:
    """Run 12 (priority 5) needs both nfs_io slots; one is held until an hour from now."""
    held = [holding(90, cpus=0.5, res={"nfs_io": 1}, ends_in=HOUR)]
    return [queued(12, priority=5, res={"nfs_io": 2})], held, make_box(counted=(("nfs_io", 2),))


@pytest.mark.parametrize(
    ("candidate", "starts"),
    [
        pytest.param(queued(20, res={"nfs_io": 1}, time=HOUR / 2), True, id="short-run-ends-before-head-starts"),
        pytest.param(queued(20, res={"nfs_io": 1}, time=HOUR), True, id="ends-exactly-at-reservation"),
        pytest.param(queued(20, res={"nfs_io": 1}, time=2 * HOUR), False, id="long-run-denied"),
        pytest.param(queued(20, res={"nfs_io": 1}), False, id="unlimited-run-denied"),
        pytest.param(queued(20, cpus=4), True, id="run-without-the-resource-starts"),
    ],
)
def test_backfill_never_delays_a_head_waiting_for_a_counted_resource(candidate, starts):
    runs, held, box = head_waiting_for_nfs_io()
    decision = decide([*runs, candidate], held, box, NOW)
    assert (started(decision) == [20]) is starts
    free = 0 if starts and candidate.envelope.resources else 1
    assert decision.waiting[12] == f"waiting: needs 2 nfs_io, {free} free"
    if not starts:
        assert decision.waiting[20] == "waiting: would delay run 12 (higher priority), which needs 2 nfs_io in 1h"


# --- GPU placement -------------------------------------------------------------------------------


def test_exclusive_runs_take_distinct_whole_cards():
    runs = [queued(i, gpus=1) for i in (1, 2, 3)]
    decision = decide(runs, [], make_box(2), NOW)
    assert decision.starts == (Start(1, (0,)), Start(2, (1,)))
    assert decision.waiting == {3: "waiting: needs 1 GPU, 0 free"}


def test_eight_10g_runs_share_one_80g_card_and_the_ninth_waits():
    runs = [queued(i, cpus=0.5, mem=1, gpus=1, gpu_mem=10) for i in range(1, 10)]
    decision = decide(runs, [], make_box(1), NOW)
    assert decision.starts == tuple(Start(i, (0,)) for i in range(1, 9))
    assert decision.waiting == {9: "waiting: needs 1 GPU with 10G free, most free is 0B"}


def test_shared_runs_pack_beside_runyard_reservations():
    held = [holding(90, on=(0,), gpus=1, gpu_mem=50)]
    decision = decide([queued(1, gpus=1, gpu_mem=30), queued(2, gpus=1, gpu_mem=1)], held, make_box(1), NOW)
    assert decision.starts == (Start(1, (0,)),)
    assert decision.waiting == {2: "waiting: needs 1 GPU with 1G free, most free is 0B"}


def test_shared_runs_go_to_the_least_loaded_cards_ties_by_index():
    cards = (card(0, foreign_gb=5), card(1, foreign_gb=1), card(2, foreign_gb=1), card(3, foreign_gb=3))
    held = [holding(90, on=(1,), gpus=1, gpu_mem=4)]  # card 1 now carries 5G
    runs = [queued(1, gpus=1, gpu_mem=10), queued(2, gpus=2, gpu_mem=10), queued(3, gpus=1, gpu_mem=10)]
    decision = decide(runs, held, make_box(cards), NOW)
    # Loads: 0:5G 1:5G 2:1G 3:3G -> run 1 on card 2 (11G), run 2 on cards 3 and 0, run 3 on 1.
    assert decision.starts == (Start(1, (2,)), Start(2, (0, 3)), Start(3, (1,)))


def test_multi_gpu_shared_run_needs_distinct_cards():
    decision = decide([queued(1, gpus=2, gpu_mem=10)], [], make_box((card(0), card(1, foreign_gb=75))), NOW)
    assert decision.waiting == {1: "waiting: needs 2 GPUs with 10G free each, 1 has that much"}


@pytest.mark.parametrize(
    ("gpu", "placed"),
    [
        pytest.param(card(0), True, id="idle"),
        pytest.param(card(0, foreign_gb=300 / 1024), True, id="driver-context-only"),
        pytest.param(GpuView(0, 80 * G, mem_foreign=IDLE_GPU_MEM_BYTES), False, id="foreign-memory-at-threshold"),
        pytest.param(card(0, procs=1), False, id="foreign-process-without-memory"),
        pytest.param(card(0, available=False), False, id="unavailable"),
    ],
)
def test_exclusive_runs_only_take_idle_cards(gpu, placed):
    decision = decide([queued(1, gpus=1)], [], make_box((gpu,)), NOW)
    assert decision.starts == ((Start(1, (0,)),) if placed else ())


def test_exclusive_and_shared_runyard_runs_never_mix_on_a_card():
    held = [
        holding(90, on=(0,), gpus=1),
        holding(91, on=(1,), gpus=1, gpu_mem=1),
    ]
    decision = decide([queued(1, gpus=1, gpu_mem=10), queued(2, gpus=1)], held, make_box(2), NOW)
    assert decision.starts == (Start(1, (1,)),)
    assert decision.waiting == {2: "waiting: needs 1 GPU, 0 free"}


def test_foreign_memory_limits_shared_runs():
    decision = decide([queued(1, gpus=1, gpu_mem=10)], [], make_box((card(0, foreign_gb=74),)), NOW)
    assert decision.waiting == {1: "waiting: needs 1 GPU with 10G free, most free is 6G"}


def test_unavailable_cards_are_never_used_and_are_named():
    cards = (card(0, available=False), card(1), card(2, available=False))
    runs = [queued(1, gpus=2), queued(2, gpus=1, gpu_mem=8), queued(3, gpus=1, gpu_mem=8)]
    decision = decide(runs, [], make_box(cards), NOW)
    assert decision.starts == (Start(2, (1,)), Start(3, (1,)))
    assert decision.waiting == {1: "waiting: needs 2 GPUs, 0 free, 2 unavailable"}


def test_cpu_only_runs_get_no_gpus():
    assert decide([queued(1)], [], make_box(2), NOW).starts == (Start(1, ()),)


# --- reasons -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "held", "box", "reason"),
    [
        (
            queued(1, gpus=2),
            [holding(90, on=(0,), gpus=1)],
            make_box((card(0), card(1), card(2, available=False))),
            "waiting: needs 2 GPUs, 1 free, 1 unavailable",
        ),
        (
            queued(1, gpus=2),
            [],
            make_box((card(0, procs=1), card(1, foreign_gb=2), card(2))),
            "waiting: needs 2 GPUs, 1 free, 2 in use outside runyard",
        ),
        (queued(1, mem=16), [holding(90, mem=22.5)], make_box(mem_gb=32), "waiting: needs 16G memory, 9.5G free"),
        (queued(1, cpus=4), [holding(90, cpus=14.5)], make_box(cpus=16), "waiting: needs 4 CPUs, 1.5 free"),
        (queued(1, disk=20), [], make_box(disk_free=3 * G), "waiting: needs 20G disk, 3G free"),
        (
            queued(1, gpus=2, gpu_mem=10),
            [],
            make_box((card(0, foreign_gb=74), card(1, foreign_gb=75))),
            "waiting: needs 2 GPUs with 10G free each, none has that much, most free is 6G",
        ),
        # GPUs are named before CPUs, memory and disk.
        (
            queued(1, cpus=32, gpus=1),
            [holding(90, on=(0,), gpus=1)],
            make_box(1, cpus=64),
            "waiting: needs 1 GPU, 0 free",
        ),
    ],
)
def test_waiting_reasons_name_the_first_missing_resource(run, held, box, reason):
    assert decide([run], held, box, NOW).waiting == {run.run_id: reason}


def test_reasons_describe_the_box_after_this_calls_starts():
    runs = [queued(1, gpus=1, cpus=1), queued(2, priority=-1, cpus=2)]
    decision = decide(runs, [], make_box(1, cpus=2), NOW)
    assert started(decision) == [1]
    assert decision.waiting == {2: "waiting: needs 2 CPUs, 1 free"}


# --- backfill ------------------------------------------------------------------------------------


def head_waiting_for_a_second_gpu(ends_in: float | None = HOUR) -> tuple[list[QueuedRun], list[Holding], BoxView]:
    """Run 12 (priority 5) needs both cards; card 1 is held until ``ends_in``."""
    held = [holding(90, on=(1,), ends_in=ends_in, cpus=0.5, gpus=1)]
    return [queued(12, priority=5, gpus=2)], held, make_box(2)


@pytest.mark.parametrize(
    ("candidate", "starts", "reason"),
    [
        pytest.param(queued(20, gpus=1, time=HOUR / 2), True, None, id="short-run-ends-before-head-starts"),
        pytest.param(queued(20, gpus=1, time=HOUR), True, None, id="ends-exactly-at-reservation"),
        pytest.param(
            queued(20, gpus=1, time=2 * HOUR),
            False,
            "waiting: would delay run 12 (higher priority), which needs 2 GPUs in 1h",
            id="long-run-denied",
        ),
        pytest.param(
            queued(20, gpus=1),
            False,
            "waiting: would delay run 12 (higher priority), which needs 2 GPUs in 1h",
            id="unlimited-run-denied",
        ),
        pytest.param(
            queued(20, gpus=1, gpu_mem=10),
            False,
            "waiting: would delay run 12 (higher priority), which needs 2 GPUs in 1h",
            id="sharing-the-card-the-head-needs-whole-denied",
        ),
        pytest.param(queued(20, cpus=4, mem=8), True, None, id="long-cpu-run-uses-what-head-does-not-need"),
        pytest.param(
            queued(20, cpus=15.5),
            False,
            "waiting: would delay run 12 (higher priority), which needs 1 CPU in 1h",
            id="cpu-run-taking-the-cpu-the-head-needs-denied",
        ),
    ],
)
def test_backfill_never_delays_the_head(candidate, starts, reason):
    runs, held, box = head_waiting_for_a_second_gpu()
    decision = decide([*runs, candidate], held, box, NOW)
    assert (started(decision) == [20]) is starts
    free_cards = 0 if starts and candidate.envelope.gpus else 1
    assert decision.waiting[12] == f"waiting: needs 2 GPUs, {free_cards} free"
    if reason:
        assert decision.waiting[20] == reason


def test_backfills_that_are_harmless_alone_do_not_add_up_to_a_delay():
    # At S the head needs 3 of 4 cards: one spare card, so only one unlimited run may take it.
    held = [holding(90, on=(0, 1), ends_in=HOUR, gpus=2)]
    runs = [queued(12, priority=5, gpus=3), queued(20, gpus=1), queued(21, gpus=1)]
    decision = decide(runs, held, make_box(4), NOW)
    assert decision.starts == (Start(20, (2,)),)
    assert decision.waiting[21] == "waiting: would delay run 12 (higher priority), which needs 3 GPUs in 1h"


def test_holding_without_end_counts_as_ending_now():
    runs, held, box = head_waiting_for_a_second_gpu(ends_in=None)
    decision = decide([*runs, queued(20, gpus=1, time=60)], held, box, NOW)
    assert decision.starts == ()
    assert decision.waiting[20] == "waiting: would delay run 12 (higher priority), which needs 2 GPUs"


def test_overdue_holding_counts_as_ending_now():
    runs, held, box = head_waiting_for_a_second_gpu(ends_in=-HOUR)
    decision = decide([*runs, queued(20, gpus=1, time=60)], held, box, NOW)
    assert decision.starts == ()


def test_same_priority_blocker_is_named_as_queued_earlier():
    held = [holding(90, on=(1,), ends_in=HOUR, gpus=1)]
    decision = decide([queued(12, gpus=2), queued(20, gpus=1)], held, make_box(2), NOW)
    assert decision.waiting[20] == "waiting: would delay run 12 (queued earlier), which needs 2 GPUs in 1h"


def test_backfill_goes_to_a_card_the_head_does_not_count_on():
    # Card 2 carries another user's 2G, so it is no use to a whole-card run but fine to share.
    cards = (card(0), card(1), card(2, foreign_gb=2))
    held = [holding(90, on=(1,), ends_in=HOUR, gpus=1)]
    runs = [queued(12, priority=5, gpus=2), queued(20, gpus=1, gpu_mem=10)]
    decision = decide(runs, held, make_box(cards), NOW)
    assert decision.starts == (Start(20, (2,)),)


@pytest.mark.parametrize(
    ("box", "held", "starts"),
    [
        pytest.param(make_box(mem_gb=32), [holding(90, mem=20, ends_in=HOUR)], False, id="runyard-memory-reserves"),
        pytest.param(make_box(mem_gb=32, mem_foreign=20 * G), [], True, id="foreign-memory-reserves-nothing"),
    ],
)
def test_head_blocked_by_others_reserves_nothing(box, held, starts):
    """A head that would not fit with all runyard runs gone (S = infinity) cannot be delayed by them."""
    decision = decide([queued(12, priority=5, mem=30), queued(20, mem=8)], held, box, NOW)
    assert (started(decision) == [20]) is starts
    free_gb = 4 if starts else 12
    assert decision.waiting[12] == f"waiting: needs 30G memory, {free_gb}G free"


def test_every_blocked_run_up_to_the_cap_is_protected():
    """Runs behind the head are protected too, up to MAX_RESERVATIONS; past the cap they are not."""
    held = [holding(90, cpus=3.5, ends_in=HOUR), holding(91, cpus=0.01, on=(1,), ends_in=HOUR, gpus=1)]
    box = make_box(2, cpus=4)

    def decide_with(blockers_ahead: int) -> Decision:
        # Blockers need the CPUs at S but no GPU; the protected run needs both cards.
        runs = [queued(i, cpus=3.5, mem=0) for i in range(1, blockers_ahead + 1)]
        runs.append(queued(100, cpus=0.1, mem=0, gpus=2))
        runs.append(queued(200, cpus=0.1, mem=0, gpus=1))
        return decide(runs, held, box, NOW)

    protected = decide_with(MAX_RESERVATIONS - 1)
    assert protected.waiting[200] == "waiting: would delay run 100 (queued earlier), which needs 2 GPUs in 1h"
    past_cap = decide_with(MAX_RESERVATIONS)
    assert past_cap.starts == (Start(200, (0,)),)


# --- properties ----------------------------------------------------------------------------------

CAPACITIES = ((), (("nfs_io", 2),), (("licence", 1), ("nfs_io", 4)), (("licence", 2), ("nfs_io", 1)))
"""Counted resources a box may declare; no box declares ``db``, so asking for it is refused."""

ASKS = (
    (), (), (), (),
    (("nfs_io", 1),), (("nfs_io", 2),), (("licence", 1),), (("licence", 1), ("nfs_io", 1)), (("db", 1),),
)
"""Counted resources a run may ask for; mostly none, as on a real box."""


@st.composite
def boxes(draw) -> BoxView:
    count = draw(st.sampled_from((0, 1, 2, 3, 3, 4, 4)))
    cards = tuple(
        GpuView(
            index=i,
            mem_total=draw(st.sampled_from((24, 40, 80, 80))) * G,
            mem_foreign=draw(st.sampled_from((0, 0, 0, 300 * M, 2 * G, 30 * G))),
            foreign_procs=draw(st.sampled_from((0, 0, 0, 0, 1))),
            available=draw(st.sampled_from((True, True, True, True, False))),
        )
        for i in range(count)
    )
    return BoxView(
        cpus=draw(st.sampled_from((2, 4, 6.5, 8))),
        mem_total=draw(st.sampled_from((16, 32, 64))) * G,
        mem_foreign=draw(st.sampled_from((0, 1, 6))) * G,
        disk_free=draw(st.sampled_from((5, 50, 500))) * G,
        gpus=cards,
        counted=draw(st.sampled_from(CAPACITIES)),
    )


@st.composite
def envelopes(draw) -> Envelope:
    gpus = draw(st.sampled_from((0, 0, 1, 1, 1, 2, 3)))
    return Envelope(
        cpus=draw(st.sampled_from((0.5, 1, 1, 2, 3))),
        mem_bytes=draw(st.sampled_from((0, 1, 4, 8))) * G,
        gpus=gpus,
        gpu_mem_bytes=draw(st.sampled_from((None, None, 8 * G, 10 * G, 20 * G, 40 * G))) if gpus else None,
        disk_bytes=draw(st.sampled_from((0, 0, 1, 10))) * G,
        time_limit_s=draw(st.sampled_from((None, 300.0, 1800.0, 3600.0, 7200.0))),
        resources=draw(st.sampled_from(ASKS)),
    )


@st.composite
def scenarios(draw) -> tuple[list[QueuedRun], list[Holding], BoxView]:
    box = draw(boxes())
    indices = [card.index for card in box.gpus]
    holdings = []
    for run_id in range(1000, 1000 + draw(st.integers(0, 3))):
        envelope = draw(envelopes())
        if envelope.gpus > len(indices):
            continue
        gpus = tuple(sorted(draw(st.permutations(indices))[: envelope.gpus]))
        end = draw(st.sampled_from((None, NOW - 60, NOW + 600, NOW + 1800, NOW + 3600, NOW + 7200)))
        holdings.append(Holding(run_id, envelope, gpus, end))
    queue = [
        QueuedRun(
            run_id,
            draw(envelopes()),
            priority=draw(st.integers(0, 2)),
            submitted_at=draw(st.sampled_from((0.0, 1.0, 2.0))),
            held=draw(st.integers(0, 9)) == 0,
        )
        for run_id in draw(st.lists(st.integers(1, 50), max_size=12, unique=True))
    ]
    return queue, holdings, box


@st.composite
def contended(draw) -> tuple[list[QueuedRun], list[Holding], BoxView]:
    """A scenario plus a top-priority run asking for most of the box: backfill is then the question."""
    queue, holdings, box = draw(scenarios())
    cards = len(box.gpus)
    big = Envelope(
        cpus=draw(st.sampled_from((1, box.cpus / 2, box.cpus))),
        mem_bytes=draw(st.sampled_from((1, 8))) * G,
        gpus=draw(st.integers(0, cards)),
        time_limit_s=draw(st.sampled_from((None, 3600.0))),
        resources=draw(st.sampled_from(((), box.counted))),
    )
    return [QueuedRun(99, big, priority=3), *queue], holdings, box


def oracle_fits(envelope: Envelope, box: BoxView, taken: list[tuple[Envelope, tuple[int, ...]]]) -> bool:
    """Whether ``envelope`` fits beside ``taken`` (envelope, cards) by the contract, by brute counting."""
    cpus = box.cpus - sum(e.cpus for e, _ in taken)
    mem = box.mem_total - box.mem_foreign - sum(e.mem_bytes for e, _ in taken)
    disk = box.disk_free - sum(e.disk_bytes for e, _ in taken)
    if envelope.cpus > cpus + 1e-9 or envelope.mem_bytes > mem or envelope.disk_bytes > disk:
        return False
    for name, count in envelope.resources:
        if count > counted_free(name, box, [e for e, _ in taken]):
            return False
    usable = 0
    for gpu in box.gpus:
        users = [e for e, cards in taken if gpu.index in cards]
        if not gpu.available or any(e.exclusive_gpus for e in users):
            continue
        if envelope.exclusive_gpus:
            usable += not users and gpu.mem_foreign < IDLE_GPU_MEM_BYTES and gpu.foreign_procs == 0
        elif envelope.gpus:
            reserved = sum(e.gpu_mem_bytes for e in users)
            usable += gpu.mem_foreign + reserved + envelope.gpu_mem_bytes <= gpu.mem_total
    return usable >= envelope.gpus


def counted_free(name: str, box: BoxView, taken: list[Envelope]) -> int:
    """Capacity of ``name`` (0 if undeclared) minus what ``taken`` asks of it."""
    return dict(box.counted).get(name, 0) - sum(dict(e.resources).get(name, 0) for e in taken)


def check_no_overcommit(queue, holdings, box, decision):
    by_id = {run.run_id: run for run in queue}
    taken = [(h.envelope, h.gpus) for h in holdings]
    for start in decision.starts:
        envelope = by_id[start.run_id].envelope
        assert len(start.gpus) == len(set(start.gpus)) == envelope.gpus
        assert oracle_fits(envelope, box, taken), f"run {start.run_id} started without room"
        for index in start.gpus:
            assert next(gpu for gpu in box.gpus if gpu.index == index).available
        taken.append((envelope, start.gpus))
    if decision.starts:
        assert sum(e.cpus for e, _ in taken) <= box.cpus + 1e-9
        assert sum(e.mem_bytes for e, _ in taken) <= box.mem_total - box.mem_foreign
    for name in {name for start in decision.starts for name, _ in by_id[start.run_id].envelope.resources}:
        assert counted_free(name, box, [e for e, _ in taken]) >= 0, f"{name} over-committed"
    started_cards = {index for start in decision.starts for index in start.gpus}
    for gpu in box.gpus:
        if gpu.index not in started_cards:
            continue
        users = [e for e, cards in taken if gpu.index in cards]
        if any(e.exclusive_gpus for e in users):
            assert len(users) == 1, f"card {gpu.index} held whole and shared"
        else:
            assert gpu.mem_foreign + sum(e.gpu_mem_bytes for e in users) <= gpu.mem_total


def release_s(end: float | None) -> float:
    return NOW if end is None else max(end, NOW)


def check_reservations_kept(queue, holdings, box, decision):
    """Each blocked run can still start at the time it was promised, whatever was backfilled.

    Simulation: S is the first moment the run fits as holdings and the runs started
    ahead of it end (an unlimited one at any moment, i.e. now). At S the runs started
    behind it that are still running are held too; the run must fit anyway.
    """
    order = sorted(queue, key=queue_order)
    position = {run.run_id: i for i, run in enumerate(order)}
    by_id = {run.run_id: run for run in queue}
    start_gpus = {start.run_id: start.gpus for start in decision.starts}

    def end_of(run_id: int) -> float | None:
        limit = by_id[run_id].envelope.time_limit_s
        return None if limit is None else NOW + limit

    blocked = [run for run in order if decision.waiting.get(run.run_id, "").startswith("waiting: needs")]
    for run in blocked[:MAX_RESERVATIONS]:
        here = position[run.run_id]
        ahead = [(h.envelope, h.gpus, release_s(h.expected_end)) for h in holdings]
        ahead += [
            (by_id[i].envelope, gpus, release_s(end_of(i))) for i, gpus in start_gpus.items() if position[i] < here
        ]
        behind = [(by_id[i].envelope, gpus, end_of(i)) for i, gpus in start_gpus.items() if position[i] > here]
        assert not oracle_fits(run.envelope, box, [(e, g) for e, g, _ in ahead + behind])
        moments = sorted({at for _, _, at in ahead})
        promised = next(
            (at for at in moments if oracle_fits(run.envelope, box, [(e, g) for e, g, t in ahead if t > at])), None
        )
        if promised is None:
            continue  # blocked by others' usage: nothing runyard runs can delay
        still_running = [(e, g) for e, g, t in ahead if t > promised]
        still_running += [(e, g) for e, g, end in behind if end is None or end > promised]
        assert oracle_fits(run.envelope, box, still_running), f"run {run.run_id} delayed past {promised - NOW}s"


def check_reasons_are_true(queue, holdings, box, decision):
    """A run said to lack resources really does not fit after the starts; nothing is forgotten."""
    by_id = {run.run_id: run for run in queue}
    taken = [(h.envelope, h.gpus) for h in holdings]
    taken += [(by_id[start.run_id].envelope, start.gpus) for start in decision.starts]
    accounted = set(started(decision)) | set(decision.waiting) | set(decision.refused)
    assert accounted == set(by_id)
    assert len(accounted) == len(decision.starts) + len(decision.waiting) + len(decision.refused)
    for run_id, reason in decision.waiting.items():
        if reason.startswith("waiting: needs"):
            assert not oracle_fits(by_id[run_id].envelope, box, taken)
        else:
            assert reason.startswith(("waiting: would delay run", "held:", "draining:"))


@settings(max_examples=400, deadline=None)
@given(st.one_of(scenarios(), contended()))
def test_property_admission_is_safe_and_keeps_its_promises(scenario):
    queue, holdings, box = scenario
    decision = decide(queue, holdings, box, NOW)
    check_no_overcommit(queue, holdings, box, decision)
    check_reservations_kept(queue, holdings, box, decision)
    check_reasons_are_true(queue, holdings, box, decision)
    for run in queue:
        refusal = never_fits(run.envelope, box)
        assert (decision.refused.get(run.run_id)) == refusal
        if run.held and refusal is None:
            assert decision.waiting[run.run_id] == f"held: release it with `runyard release {run.run_id}`"


@settings(max_examples=200, deadline=None)
@given(st.one_of(scenarios(), contended()), st.randoms(use_true_random=False))
def test_property_same_input_any_order_same_decision(scenario, rng):
    queue, holdings, box = scenario
    first = decide(queue, holdings, box, NOW)
    shuffled_queue, shuffled_holdings = queue.copy(), holdings.copy()
    rng.shuffle(shuffled_queue)
    rng.shuffle(shuffled_holdings)
    again = decide(shuffled_queue, shuffled_holdings, box, NOW)
    assert again.starts == first.starts
    assert list(again.waiting.items()) == list(first.waiting.items())
    assert list(again.refused.items()) == list(first.refused.items())
    assert decide(queue, holdings, box, NOW) == first


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_property_draining_starts_nothing(scenario):
    queue, holdings, box = scenario
    decision = decide(queue, holdings, box, NOW, draining=True)
    assert decision.starts == ()
    for run in queue:
        if run.run_id in decision.waiting:
            expected = "held:" if run.held else "draining:"
            assert decision.waiting[run.run_id].startswith(expected)


@st.composite
def counted_workloads(draw) -> tuple[BoxView, list[QueuedRun], dict[int, float]]:
    """A roomy box whose only contention is counted resources, a queue, and how long each run really lasts."""
    box = make_box(cpus=64, mem_gb=512, counted=draw(st.sampled_from(CAPACITIES[1:])))
    queue = [
        QueuedRun(
            run_id,
            Envelope(
                cpus=0.5,
                mem_bytes=0,
                time_limit_s=draw(st.sampled_from((None, 600.0, 3600.0))),
                resources=draw(st.sampled_from(ASKS)),
            ),
            priority=draw(st.integers(0, 2)),
            submitted_at=float(run_id),
        )
        for run_id in range(1, draw(st.integers(1, 14)) + 1)
    ]
    lasts_s = {run.run_id: draw(st.sampled_from((60.0, 300.0, 600.0, 5000.0))) for run in queue}
    return box, queue, lasts_s


@settings(max_examples=150, deadline=None)
@given(counted_workloads())
def test_property_counted_resources_are_never_over_committed_as_runs_come_and_go(workload):
    """Decide, start, let runs end (by their limit at the latest), decide again: capacity holds at
    every step, and every run that fits the box eventually starts."""
    box, queue, lasts_s = workload
    by_id = {run.run_id: run for run in queue}
    now, refused, started_ids = NOW, set(), []
    running: dict[int, tuple[Holding, float]] = {}  # and when each really ends
    while queue:
        decision = decide(queue, [held for held, _ in running.values()], box, now)
        refused |= set(decision.refused)
        for start in decision.starts:
            envelope = by_id[start.run_id].envelope
            expected_end = None if envelope.time_limit_s is None else now + envelope.time_limit_s
            ends_at = min(now + lasts_s[start.run_id], expected_end or float("inf"))
            running[start.run_id] = (Holding(start.run_id, envelope, (), expected_end), ends_at)
            started_ids.append(start.run_id)
        for name, capacity in box.counted:
            held = sum(dict(h.envelope.resources).get(name, 0) for h, _ in running.values())
            assert held <= capacity, f"{name}: {held} held of {capacity}"
        gone = refused | set(started(decision))
        queue = [run for run in queue if run.run_id not in gone]
        if not running:
            assert not queue, "nothing runs, yet runs that fit an empty box wait"
            break
        now = min(ends_at for _, ends_at in running.values())
        running = {run_id: entry for run_id, entry in running.items() if entry[1] > now}
    assert sorted(started_ids + list(refused)) == sorted(by_id)
    assert refused == {run_id for run_id, run in by_id.items() if never_fits(run.envelope, box)}


def test_large_queue_of_few_shapes():
    """A realistic 10,000-run queue and 64 holdings: every run accounted for, the box not overcommitted."""
    rng = random.Random(7)
    box = make_box(8, cpus=64, mem_gb=512)
    shapes = [env(cpus=2, mem=8), env(cpus=4, mem=16, gpus=1), env(cpus=4, mem=16, gpus=1, gpu_mem=10, time=HOUR)]
    shapes += [env(cpus=8, mem=64, gpus=4, time=6 * HOUR), env(cpus=8, mem=64, gpus=8)]
    holdings = [
        Holding(20_000 + i, env(cpus=0.5, mem=2, gpus=1, gpu_mem=2), gpus=(i % 8,), expected_end=NOW + 60 * i)
        for i in range(64)
    ]
    queue = [
        QueuedRun(i, rng.choice(shapes), priority=rng.choice((0, 0, 0, 10)), submitted_at=rng.random())
        for i in range(10_000)
    ]
    decision = decide(queue, holdings, box, NOW)
    check_no_overcommit(queue, holdings, box, decision)
    assert len(decision.starts) + len(decision.waiting) == len(queue)
    assert policy.MAX_RESERVATIONS == MAX_RESERVATIONS
