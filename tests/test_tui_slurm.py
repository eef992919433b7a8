"""The interface on an engine whose runs go to Slurm: the cluster's partitions and nodes
in place of the box's GPUs, and where each run is (node, Slurm job), as a person sees them.

The engine is scripted with the shapes of the ``status`` and run answers of the Slurm
backend (``backend``, ``cluster``, ``backend_job``, ``node``); the fixed data, clock and
app come from the snapshot tests, so these screenshots match theirs.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from test_tui_snapshots import ACTIVE_RUNS, FINISHED_RUNS, GIB, NOW, STATUS, FakeClient, _settle, make_app
from tui import format as fmt
from tui.filtering import RunFilter
from tui.screens.run_detail import RunDetailScreen
from tui.widgets.cluster import share_room
from tui.widgets.queue_table import QueueTable
from tui.widgets.resources import ResourcesPanel
from tui.widgets.run_header import RunHeader
from tui.widgets.run_line import RunLine

DEADLINE_S = 20.0

# The contract's example: the one-node test cluster of tests/slurm_cluster.py.
PARTITION = {"name": "debug", "state": "up", "default": True, "nodes": 1, "time_limit": "infinite",
             "cpus_alloc": 1, "cpus_idle": 1, "cpus_total": 2, "gpus_total": 2, "gpus_used": 1}
NODE = {"name": "localhost", "state": "mixed", "partitions": ["debug"], "cpus_total": 2, "cpus_alloc": 1,
        "mem_total_bytes": 22747627520, "mem_alloc_bytes": 104857600, "gpus_total": 2, "gpus_used": 1, "reason": ""}


def _node(name: str, state: str, cpus_alloc: int, gpus_used: int, **fields: Any) -> dict[str, Any]:
    node = {"name": name, "state": state, "partitions": ["gpu"], "cpus_total": 64, "cpus_alloc": cpus_alloc,
            "mem_total_bytes": 512 * GIB, "mem_alloc_bytes": cpus_alloc * 6 * GIB, "gpus_total": 8,
            "gpus_used": gpus_used, "reason": ""}
    node.update(fields)
    return node


SITE_PARTITIONS = [
    {"name": "cpu", "state": "up", "default": True, "nodes": 2, "time_limit": "1-00:00:00", "cpus_alloc": 36,
     "cpus_idle": 92, "cpus_total": 128, "gpus_total": 0, "gpus_used": 0},
    {"name": "gpu", "state": "up", "default": False, "nodes": 4, "time_limit": "2-00:00:00", "cpus_alloc": 104,
     "cpus_idle": 152, "cpus_total": 256, "gpus_total": 32, "gpus_used": 14},
    {"name": "maint", "state": "down", "default": False, "nodes": 1, "time_limit": "infinite", "cpus_alloc": 0,
     "cpus_idle": 64, "cpus_total": 64, "gpus_total": 8, "gpus_used": 0},
]
SITE_NODES = [
    _node("cpu01", "idle", 0, 0, partitions=["cpu"], gpus_total=0),
    _node("cpu02", "mixed", 36, 0, partitions=["cpu"], gpus_total=0),
    _node("gpu01", "allocated", 64, 8),
    _node("gpu02", "mixed", 40, 6),
    _node("gpu03", "drained", 0, 0, partitions=["gpu", "maint"], reason="Xid 79 on GPU 3 [root@2026-02-01]"),
    _node("gpu04", "down*", 0, 0, reason="Not responding"),
]


def slurm_status(*, partition: str | None = "debug", partitions: list | None = None, nodes: list | None = None,
                 error: str | None = None, at: float = NOW - 2) -> dict[str, Any]:
    """``status`` as the Slurm backend answers it: no local GPUs, the cluster instead."""
    status = copy.deepcopy(STATUS)
    status["engine"]["gpu_source"] = "none"
    status["gpus"] = []
    status["backend"] = "slurm"
    status["cluster"] = {
        "partition": partition, "at": at, "error": error,
        "partitions": copy.deepcopy([PARTITION] if partitions is None else partitions),
        "nodes": copy.deepcopy([NODE] if nodes is None else nodes),
    }
    return status


def many_nodes(count: int = 300) -> list[dict[str, Any]]:
    """A big cluster: mostly busy, some idle, a few drained; gpu123 is the busiest."""
    nodes = []
    for index in range(count):
        if index % 50 == 7:
            nodes.append(_node(f"gpu{index:03d}", "drained", 0, 0, reason="bad DIMM"))
        elif index % 4 == 0:
            nodes.append(_node(f"gpu{index:03d}", "idle", 0, 0))
        else:
            nodes.append(_node(f"gpu{index:03d}", "mixed", 8 + index % 40, index % 6))
    nodes[123] = _node("gpu123", "allocated", 64, 8)
    return nodes


def slurm_runs() -> list[dict[str, Any]]:
    """The snapshot tests' queue, handed to Slurm: three running on nodes, one pending,
    two not sent yet (held, and waiting on the engine)."""
    runs = copy.deepcopy(ACTIVE_RUNS)
    for run in runs:
        run.update(backend_job=None, node=None)
    placed = {3: ("4211", "localhost"), 4: ("4212", "gpu02"), 7: ("4213", "gpu01")}
    for run in runs:
        if run["id"] in placed:
            run.update(backend_job=placed[run["id"]][0], node=placed[run["id"]][1], gpus=[])
    pending = next(run for run in runs if run["id"] == 8)
    pending.update(backend_job="4220", reason="waiting in Slurm: Resources (job 4220)")
    return runs


class SlurmClient(FakeClient):
    """The snapshot tests' engine, with the Slurm backend's answers."""

    def __init__(self, status: dict | None = None, runs: list | None = None) -> None:
        super().__init__(status or slurm_status())
        self.runs = slurm_runs() if runs is None else runs
        self.ops: list[str] = []

    def call(self, op: str, **args: Any) -> Any:
        self.ops.append(op)
        if op == "ls":
            return copy.deepcopy(self.runs + (FINISHED_RUNS if args.get("all") else []))
        if op == "show":
            return copy.deepcopy(next(run for run in self.runs + FINISHED_RUNS if run["id"] == args["id"]))
        return super().call(op, **args)


@pytest.fixture(autouse=True)
def _colour_terminal(monkeypatch):
    # The screenshots must not depend on the terminal that runs the tests.
    monkeypatch.delenv("NO_COLOR", raising=False)


async def wait_for(pilot, predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}")
        await pilot.pause(0.02)


def panel_lines(app) -> list[str]:
    return app.query_one(ResourcesPanel).render().plain.splitlines()


def column_labels(app) -> list[str]:
    return [column.label.plain for column in app.query_one(QueueTable).columns.values()]


def cell(app, run_id: int, column: str) -> str:
    return app.query_one(QueueTable).cell_text(run_id, column)


# ----------------------------------------------------------------- screenshots

@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_cluster_overview(snap_compare, size):
    client = SlurmClient(slurm_status(partition="gpu", partitions=SITE_PARTITIONS, nodes=SITE_NODES))
    assert snap_compare(make_app(client), terminal_size=size, run_before=_settle)


def test_big_cluster_that_slurm_stopped_answering(snap_compare):
    status = slurm_status(partition="gpu", partitions=SITE_PARTITIONS, nodes=many_nodes(), at=NOW - 300,
                         error="sinfo: error: cannot reach slurmctld at ctl01:6817: Connection refused")
    assert snap_compare(make_app(SlurmClient(status)), terminal_size=(80, 24), run_before=_settle)


# --------------------------------------------------------------------- cluster

async def test_engine_line_and_panel_show_the_cluster_not_the_login_node():
    client = SlurmClient()
    app = make_app(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("NODE") for line in panel_lines(app)), "the cluster")
        assert app.sub_title == "gpubox · daemon · backend: slurm (partition debug)"
        panel = app.query_one(ResourcesPanel)
        assert panel.border_title == "Slurm cluster"
        lines = panel_lines(app)
        assert len(lines) == 4  # a header and a line per section
        partition = lines[1].split()
        # ▸: the partition runs go to; *: Slurm's default.
        assert partition[:3] == ["▸", "debug*", "up"] and partition[-4:] == ["1/2", "1/2", "infinite", "1"]
        node = lines[3].split()
        assert node[:2] == ["localhost", "mixed"] and node[-3:] == ["1/2", "100M/21.2G", "1/2"]
        # The login node's figures (the host's CPU, memory, disk, load) are not shown.
        text = "\n".join(lines)
        assert "DISK" not in text and "load" not in text and "no GPUs" not in text
        assert "allocated" in str(panel.border_subtitle)
        assert "history" not in client.ops  # no sparklines of the login node to draw


async def test_wide_panel_adds_memory_bars_partitions_and_why_a_node_is_down():
    status = slurm_status(partition=None, partitions=SITE_PARTITIONS, nodes=SITE_NODES)
    app = make_app(SlurmClient(status))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("NODE") for line in panel_lines(app)), "the cluster")
        assert app.sub_title.endswith("backend: slurm (default partition)")
        lines = panel_lines(app)
        assert lines[0].split() == ["PARTITION", "STATE", "CPUS", "GPUS", "TIME", "LIMIT", "NODES"]
        # No partition named: runs go to Slurm's default, which gets the mark.
        assert lines[1].split()[:2] == ["▸", "cpu*"] and lines[2].split()[0] == "gpu"
        assert lines[3].split()[:2] == ["maint", "down"]
        assert lines[4].split() == ["NODE", "STATE", "CPUS", "MEMORY", "GPUS", "PARTITIONS"]
        nodes = {line.split()[0]: line for line in lines[5:]}
        assert list(nodes) == ["cpu01", "cpu02", "gpu01", "gpu02", "gpu03", "gpu04"]  # all fit: sinfo's order
        gpu01 = nodes["gpu01"].split()  # name, state, CPU bar, CPUs, memory bar, memory, GPUs, partitions
        assert gpu01[3] == "64/64" and gpu01[-3:] == ["384G/512G", "8/8", "gpu"]
        assert nodes["gpu03"].split(maxsplit=2)[2] == "Xid 79 on GPU 3 [root@2026-02-01]"
        assert nodes["gpu04"].split(maxsplit=2)[1:] == ["down*", "Not responding"]


async def test_hundreds_of_nodes_show_the_busiest_and_count_the_rest_then_more_when_taller():
    status = slurm_status(partitions=SITE_PARTITIONS, nodes=many_nodes())
    app = make_app(SlurmClient(status))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("NODE") for line in panel_lines(app)), "the cluster")
        panel = app.query_one(ResourcesPanel)
        lines = panel_lines(app)
        assert len(lines) == panel.content_region.height <= 10  # the panel stays at half the screen
        nodes = lines[lines.index(next(line for line in lines if line.startswith("NODE"))) + 1:-1]
        assert nodes[0].startswith("gpu123") and len(nodes) >= 2
        shown = len(nodes)
        assert lines[-1].startswith(f"+{300 - shown} more nodes: ")
        assert "drained" in lines[-1]
        # The queue still has room for its runs.
        assert app.query_one(QueueTable).content_region.height >= 6

        await pilot.resize_terminal(120, 60)
        await wait_for(pilot, lambda: len(panel_lines(app)) > len(lines), "more nodes in a taller window")
        taller = panel_lines(app)
        assert len(taller) == panel.content_region.height
        assert taller[-1].startswith("+") and int(taller[-1][1:].split()[0]) < 300 - shown


async def test_cluster_error_is_shown_first_and_old_figures_are_dated():
    status = slurm_status(error="sinfo: error: cannot reach slurmctld at ctl01:6817:\nConnection refused",
                          at=NOW - 300)
    app = make_app(SlurmClient(status))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("⚠") for line in panel_lines(app)), "the error")
        lines = panel_lines(app)
        assert lines[0] == "⚠ sinfo: error: cannot reach slurmctld at ctl01:6817: Connection refused"
        assert lines[1].startswith("PARTITION") and lines[3].startswith("NODE")  # the last figures read
        assert str(app.query_one(ResourcesPanel).border_subtitle).startswith("sinfo read 5m ago")


async def test_a_cluster_slurm_does_not_answer_says_so():
    status = slurm_status(error="sinfo: command not found", partitions=[], nodes=[])
    app = make_app(SlurmClient(status))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: panel_lines(app)[0].startswith("⚠"), "the error")
        assert panel_lines(app) == ["⚠ sinfo: command not found",
                                    "no partitions or nodes to show until Slurm answers"]
        assert app.query_one(ResourcesPanel).border_subtitle == ""


def test_room_goes_to_partitions_first_but_never_starves_the_nodes():
    assert share_room(10, 1, 1) == (1, 1)
    assert share_room(10, 3, 300) == (3, 4)  # 1+3 partitions, 1+4 nodes, "+296 more"
    assert share_room(10, 30, 300) == (4, 2)  # 1+4, "+26 more"; 1+2 nodes, "+298 more"
    assert share_room(10, 30, 2) == (5, 2)
    assert share_room(10, 0, 300) == (0, 8)
    assert share_room(3, 5, 5) == (1, 1)  # too small for anything: one of each, cut by the panel


def test_older_engine_without_a_backend_is_local():
    status = copy.deepcopy(STATUS)
    assert fmt.engine_line(status, "gpubox") == "gpubox · daemon · GPUs: simulated 4x80G"
    status["backend"] = "local"
    assert fmt.engine_line(status, "gpubox") == "gpubox · daemon · GPUs: simulated 4x80G"


# ----------------------------------------------------------------------- where

async def test_narrow_queue_shows_the_node_or_the_pending_job_and_the_run_line_the_job():
    app = make_app(SlurmClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 6, "the queue")
        assert column_labels(app) == ["ID", "NAME", "STATE", "WHERE", "TIME / REASON", "HEALTH"]
        assert [cell(app, run_id, "where_short") for run_id in (3, 4, 7, 8, 9, 10)] == [
            "localhost", "gpu02", "gpu01", "job 4220", "", ""]
        table = app.query_one(QueueTable)
        assert table.columns["reason"].width >= 12
        assert sum(column.get_render_width(table) for column in table.columns.values()) <= table.content_region.width
        line = app.query_one(RunLine)
        await wait_for(pilot, lambda: "Slurm job 4211 on localhost" in line.render().plain, "run 3's job")

        table.select_run(8)
        await wait_for(pilot, lambda: "#8" in line.render().plain, "run 8 in the run line")
        # Its reason names the pending job already: once is enough.
        assert line.render().plain.count("4220") == 1


async def test_wide_queue_shows_node_and_job_in_place_of_blank_gpus():
    app = make_app(SlurmClient())
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 6, "the queue")
        labels = column_labels(app)
        assert "WHERE" in labels and "GPUS" not in labels and "ENVELOPE" in labels
        assert cell(app, 3, "where") == "localhost · job 4211"
        assert cell(app, 8, "where") == "job 4220"
        assert cell(app, 10, "where") == ""
        table = app.query_one(QueueTable)
        before = list(table.columns.values())[:labels.index("WHERE")]
        await pilot.click(QueueTable, offset=(1 + sum(column.get_render_width(table) for column in before) + 2, 1))
        await wait_for(pilot, lambda: table.sorting.key == "where", "sorted by where (a click on its header)")
        # By node (gpu01, gpu02, localhost); runs on no node yet after them, in queue order.
        assert table.run_keys() == ["7", "4", "3", "8", "9", "10"]


async def test_local_queue_keeps_its_columns():
    app = make_app(FakeClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 6, "the queue")
        assert column_labels(app) == ["ID", "NAME", "STATE", "TIME / REASON", "HEALTH"]
        await pilot.resize_terminal(160, 48)
        await wait_for(pilot, lambda: "ENVELOPE" in column_labels(app), "the wide columns")
        assert "GPUS" in column_labels(app) and "WHERE" not in column_labels(app)


async def test_run_detail_says_which_slurm_job_and_node():
    app = make_app(SlurmClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one(QueueTable).row_count == 6, "the queue")
        await pilot.press("enter")  # the cursor starts on run 3
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the run's detail")
        header = app.screen.query_one(RunHeader)
        await wait_for(pilot, lambda: "Slurm job 4211 on localhost" in header.render().plain, "the job and node")


def test_where_texts_and_filters():
    running = {"id": 1, "state": "running", "backend_job": "123", "node": "localhost"}
    pending = {"id": 2, "state": "queued", "backend_job": "124", "node": None}
    local = {"id": 3, "state": "running", "backend_job": None, "node": "gpubox"}
    assert [fmt.where_text(run) for run in (running, pending, local)] == ["localhost · job 123", "job 124", ""]
    assert [fmt.where_text(run, short=True) for run in (running, pending, local)] == ["localhost", "job 124", ""]
    assert [fmt.slurm_text(run) for run in (running, pending, local)] == [
        "Slurm job 123 on localhost", "Slurm job 124", ""]
    runs = [running, pending, local]
    assert [run["id"] for run in runs if RunFilter("node:local").matches(run)] == [1]
    assert [run["id"] for run in runs if RunFilter("job:124").matches(run)] == [2]
    assert [run["id"] for run in runs if RunFilter("-job:124").matches(run)] == [1, 3]
