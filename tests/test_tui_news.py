"""The notifications the interface raises on its own, from two polls."""

from __future__ import annotations

from tui.news import run_news


def run(run_id=1, **fields):
    return {"id": run_id, "name": "bert", "state": "running", "reason": "", **fields}


def test_nothing_on_the_first_poll_or_without_change():
    assert run_news(None, [run(state="failed")]) == []
    assert run_news({1: run()}, [run()]) == []


def test_bad_ends_health_warnings_pauses_and_retries_are_told():
    before = {1: run(), 2: run(2), 3: run(3), 4: run(4, state="queued"), 5: run(5), 6: run(6)}
    news = run_news(before, [
        run(1, state="failed", reason="exit code 1"),
        run(2, health="stalled", health_detail="no output for 10m"),
        run(3, warning="loss is NaN"),
    ])
    assert news == [
        ("run 1 (bert) failed: exit code 1", "error"),
        ("run 2 (bert) is stalled: no output for 10m", "warning"),
        ("run 3 (bert): loss is NaN", "warning"),
    ]
    assert run_news(before, [run(4, state="queued", reason="paused: 5 consecutive failures (exit code 1)")]) == [
        ("run 4 (bert) paused: 5 consecutive failures (exit code 1)", "warning")]
    assert run_news(before, [run(5, state="queued", reason="waiting: attempt 2 of 3")]) == [
        ("run 5 (bert) is retrying: waiting: attempt 2 of 3", "warning")]
    assert run_news(before, [run(6, state="succeeded")]) == [("run 6 (bert) succeeded", "information")]
    assert run_news(before, [run(6, state="cancelled")]) == []  # the person did that


def test_a_burst_is_summarised():
    before = {i: run(i) for i in range(10)}
    news = run_news(before, [run(i, state="failed", reason="exit code 1") for i in range(10)])
    assert len(news) == 3 and news[-1] == ("and 8 more changes", "error")
