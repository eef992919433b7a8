"""Fair share and limits: the pure parts, the engine's ordering of two users, `runyard share`."""

from __future__ import annotations

import json
import math

import pytest

from engine import fairshare
from engine.config import Config
from engine.envelope import Envelope
from engine.model import RunState
from engine.policy import BoxView, GpuView, Holding, Limit, QueuedRun, decide, queue_order
from engine.protocol import RequestError
from engine.shared_config import Limits, SharedSettings
from engine.shared_daemon import check_queued_limits
from engine_rig import G, rig  # noqa: F401  (rig is a fixture)

H = 3600.0


def test_an_hour_counts_less_the_longer_ago_it_was_used():
    now = 100 * H
    fresh = fairshare.decayed_hours(now - H, now, now, half_life_s=H)
    assert fresh == pytest.approx(0.5 / math.log(2))  # ∫ 2^(-t/H) over the last hour
    older = fairshare.decayed_hours(now - 2 * H, now - H, now, half_life_s=H)
    assert older == pytest.approx(fresh / 2)
    assert fairshare.decayed_hours(now, now - H, now, H) == 0
    # A long half-life makes it almost the plain hour.
    assert fairshare.decayed_hours(now - H, now, now, half_life_s=1000 * H) == pytest.approx(1.0, rel=1e-3)


def test_scores_weigh_gpu_hours_and_cpu_hours_and_standing_orders_them():
    now = 10 * H
    usages = [
        fairshare.Usage("alice", now - H, now, gpus=2, cpus=4),
        fairshare.Usage("bob", now - H, None, gpus=0, cpus=8),  # still running
        fairshare.Usage("alice", now - 5 * H, now - 4 * H, gpus=1, cpus=1),
    ]
    shares = fairshare.shares(usages, now, half_life_s=1000 * H, cpu_hour_weight=0.1)
    assert shares["alice"].gpu_hours == pytest.approx(3, rel=1e-2)
    assert shares["bob"].cpu_hours == pytest.approx(8, rel=1e-2)
    assert shares["bob"].score == pytest.approx(0.8, rel=1e-2)
    assert shares["bob"].score < shares["alice"].score
    assert fairshare.standing({"alice": 3.5, "bob": 0.8, "carol": 0.8, "dan": 0.0}) == {
        "dan": 1, "bob": 2, "carol": 2, "alice": 4,
    }


def test_the_book_keeps_a_running_total_that_matches_a_fresh_count(rig, tmp_path):
    engine, launcher, clock, _ = rig
    for user in ("alice", "bob", "alice"):
        request = {"argv": ["/bin/true"], "cwd": str(tmp_path), "envelope": {"cpus": 2, "mem_bytes": G}}
        run_id = engine.submit(request, uid=1, user=user).id
        engine.tick()
        clock.now += H
        launcher.exits[run_id] = 0
        engine.tick()
    book = fairshare.UsageBook(half_life_s=2 * H, cpu_hour_weight=0.5)
    early = book.shares(engine.store.conn, clock.now)
    clock.now += 3 * H
    late_run = engine.submit({"argv": ["/bin/true"], "cwd": str(tmp_path), "envelope": {"cpus": 4, "mem_bytes": G}},
                             uid=2, user="bob").id
    engine.tick()
    clock.now += H / 2
    later = book.shares(engine.store.conn, clock.now)
    fresh = fairshare.UsageBook(half_life_s=2 * H, cpu_hour_weight=0.5).shares(engine.store.conn, clock.now)
    for user in ("alice", "bob"):
        assert later[user].cpu_hours == pytest.approx(fresh[user].cpu_hours)
        assert later[user].score == pytest.approx(fresh[user].score)
    assert later["alice"].cpu_hours < early["alice"].cpu_hours  # it decayed
    assert engine.get(late_run).state is RunState.RUNNING


def _run(run_id, *, cpus=1.0, gpus=0, priority=0, submitted_at=0.0, share=0.0, accounts=()):
    return QueuedRun(run_id, Envelope(cpus=cpus, mem_bytes=G, gpus=gpus), priority, submitted_at, share=share,
                     accounts=accounts)


def test_equal_priorities_go_by_share_then_by_submission():
    heavy = _run(1, submitted_at=1.0, share=5.0)
    light = _run(2, submitted_at=2.0, share=0.5)
    urgent = _run(3, submitted_at=3.0, share=9.0, priority=1)
    assert sorted([heavy, light, urgent], key=queue_order) == [urgent, light, heavy]
    box = BoxView(cpus=1, mem_total=64 * G)
    decision = decide([heavy, light], [], box, now=0.0)
    assert [start.run_id for start in decision.starts] == [2]
    # Without shares (one user, or fair share off) it is first come, first served as before.
    plain = decide([_run(1, submitted_at=1.0), _run(2, submitted_at=2.0)], [], box, 0.0)
    assert [start.run_id for start in plain.starts] == [1]


def test_a_limit_holds_back_a_users_runs_and_refuses_what_can_never_fit_it():
    box = BoxView(cpus=32, mem_total=256 * G)
    limits = {"user alice": Limit(cpus=4), "group lab": Limit(cpus=6)}
    alice = ("user alice", "group lab")
    queue = [_run(1, cpus=3, accounts=alice), _run(2, cpus=2, accounts=alice), _run(3, cpus=5, accounts=alice),
             _run(4, cpus=3, accounts=("group lab",)), _run(5, cpus=2, accounts=("group lab",)), _run(6, cpus=8)]
    decision = decide(queue, [Holding(9, Envelope(cpus=1, mem_bytes=G), accounts=("group lab",))], box, 0.0,
                      limits=limits)
    assert [start.run_id for start in decision.starts] == [1, 5, 6]
    assert decision.waiting[2] == "waiting: user alice's limit is 4 CPUs at once, 3 held"
    assert decision.refused[3] == "asks 5 CPUs; user alice may hold at most 4 CPUs at once"
    assert decision.waiting[4] == "waiting: group lab's limit is 6 CPUs at once, 4 held"
    two_cards = BoxView(cpus=8, mem_total=64 * G, gpus=(GpuView(0, 80 * G), GpuView(1, 80 * G)))
    gpus = decide([_run(1, gpus=2, accounts=alice), _run(2, gpus=1, accounts=alice)], [], two_cards, 0.0,
                  limits={"user alice": Limit(gpus=1, mem_bytes=4 * G)})
    assert gpus.refused[1] == "asks 2 GPUs; user alice may hold at most 1 GPU at once"
    assert [start.run_id for start in gpus.starts] == [2]


def test_the_engine_starts_the_user_with_less_recent_use_first(rig, tmp_path):
    engine, launcher, clock, _ = rig
    engine.config = Config(shared=SharedSettings(half_life_s=24 * H))
    whole_box = {"cpus": 8, "mem_bytes": G}

    def submit(user, uid, **extra):
        request = {"argv": ["/bin/true"], "cwd": str(tmp_path), "envelope": whole_box, **extra}
        return engine.submit(request, uid=uid, user=user).id

    past = submit("alice", 1001)  # alice used the whole box for two hours
    engine.tick()
    clock.now += 2 * H
    launcher.exits[past] = 0
    engine.tick()
    engine.store.set_meta("draining", "1")  # queue both before either can start
    alice = submit("alice", 1001)
    clock.now += 60
    bob = submit("bob", 1002)
    engine.store.set_meta("draining", None)
    engine.tick()
    assert launcher.launches[-1] == (bob, 1), "bob used less recently: he goes first although alice queued first"
    assert engine.get(alice).reason == "waiting: needs 8 CPUs, 0 free"
    launcher.exits[bob] = 0
    engine.tick()
    assert launcher.launches[-1] == (alice, 1)
    # Priority still comes first.
    launcher.exits[alice] = 0
    engine.tick()
    engine.store.set_meta("draining", "1")
    bob_again = submit("bob", 1002)
    alice_urgent = submit("alice", 1001, priority=5)
    engine.store.set_meta("draining", None)
    engine.tick()
    assert launcher.launches[-1] == (alice_urgent, 1) and engine.get(bob_again).state is RunState.QUEUED


def test_the_engine_holds_a_users_runs_at_their_limit(rig, tmp_path):
    engine, launcher, clock, _ = rig
    engine.config = Config(shared=SharedSettings(limits=Limits(cpus=4)))
    request = {"argv": ["/bin/true"], "cwd": str(tmp_path), "envelope": {"cpus": 3, "mem_bytes": G}}
    first = engine.submit(request, uid=1001, user="alice").id
    second = engine.submit(request, uid=1001, user="alice").id
    other = engine.submit(request, uid=1002, user="bob").id
    engine.tick()
    engine.tick()
    assert {run_id for run_id, _ in launcher.launches} == {first, other}
    assert engine.get(second).reason == "waiting: user alice's limit is 4 CPUs at once, 3 held"
    launcher.exits[first] = 0
    engine.tick()
    assert (second, 1) in launcher.launches


def test_a_submit_past_the_most_runs_queued_is_refused_in_one_line(rig, tmp_path):
    engine, _, _, _ = rig
    settings = SharedSettings(limits=Limits(queued=2))
    request = {"argv": ["/bin/true"], "cwd": str(tmp_path), "held": True}
    for _ in range(2):
        check_queued_limits(engine.store.conn, settings, 1001, "alice", [request])
        engine.submit(request, uid=1001, user="alice")
    with pytest.raises(RequestError, match="alice has 2 runs queued and may have at most 2; nothing was queued"):
        check_queued_limits(engine.store.conn, settings, 1001, "alice", [request])
    check_queued_limits(engine.store.conn, settings, 1002, "bob", [request, request])
    with pytest.raises(RequestError):
        check_queued_limits(engine.store.conn, settings, 1002, "bob", [request] * 3)


def test_runyard_share_shows_each_users_usage_and_standing(yard):
    config = '[shared]\nfair_share_half_life = "1d"\n[shared.limits]\nqueued = 50\n'
    (yard.home / "empty-config.toml").write_text(config)
    yard.start_daemon()
    run_id = yard.submit("--cpus", "0.5", "--mem", "20M", "--", "sleep", "0.3")
    yard.wait_state(run_id, "succeeded")
    report = json.loads(yard.cli("share", "--json").stdout)
    assert report["half_life_s"] == 86400 and len(report["users"]) == 1
    me = report["users"][0]
    assert me["standing"] == 1 and me["cpu_hours"] > 0 and me["gpu_hours"] == 0
    assert me["limits"] == {f"user {me['user']}": {"queued": 50}}
    table = yard.cli("share").stdout
    assert "half-life of 1d" in table and "STANDING" in table and f"user {me['user']}: 50 queued" in table
