"""Admission: which queued runs start now, on which GPUs, and why the others wait.

A pure, deterministic function of (queue, what running runs hold, what the box shows
free, the clock). No I/O, no clock reads, no randomness: every scheduling behaviour is
testable without a GPU and without sleeping. The same inputs, in any queue order, give
the same :class:`Decision`.

Rules, in the order :func:`decide` applies them:

1. **Order.** Highest ``priority`` first, then the lowest fair-share ``share`` (the
   submitter's recent usage, :mod:`engine.fairshare`; 0 for all runs when fair share
   does not apply), then earliest ``submitted_at``, then lowest ``run_id``.
2. **Refusal.** A run whose envelope exceeds what never changes on this box (GPU count,
   the memory of its cards, CPU count, memory, the capacity of a named counted
   resource, or asks for a name the config does not declare) goes to
   ``Decision.refused`` with a line such as ``asks 3 GPUs; this box has 2``, whether or
   not it is held. Disk, foreign usage and unavailable GPUs change, so they only ever
   make a run wait.
3. **Held** runs wait ("held: release it with `runyard release 12`"); while
   **draining** every other run waits too ("draining: ..."). Neither blocks nor
   reserves anything. Nor does a run whose **limit** would be passed: each of its
   ``accounts`` (a user, a group) with a :class:`Limit` may hold only so many GPUs,
   CPUs and bytes of memory at once, counting its running runs and this call's starts
   ("waiting: user alice's limit is 2 GPUs at once, 2 held"); a run that alone asks
   more than a limit is refused.
   A run never gets the GPUs in its ``forbid`` (set aside for a pool or a reservation it
   is not part of), and waits when the others are not enough.
4. **What is free now.** CPUs: ``box.cpus`` minus what runyard runs hold; other users'
   CPU load is not subtracted, CPUs are time-shared and a busy box only runs slower.
   Memory: ``mem_total - mem_foreign`` minus holdings. Disk: ``disk_free`` minus
   holdings' ``disk_bytes``. Named counted resources (``BoxView.counted``): capacity
   minus what runyard runs hold; only runyard runs are known to use them, so, like
   CPUs, they always come free as runyard runs end, and a reservation and backfill
   treat them exactly as CPUs.
5. **GPUs.** ``gpus=N`` without ``gpu_mem_bytes`` takes N whole cards that are
   available, used by no runyard run, and idle outside runyard (no foreign compute
   process, foreign memory under :data:`IDLE_GPU_MEM_BYTES`). With ``gpu_mem_bytes=M``
   it takes N distinct available cards not held whole, each keeping
   ``mem_foreign + runyard reservations + M <= mem_total`` (eight 10G runs share one
   80G card). Least loaded cards first (foreign plus runyard bytes), ties by lower index:
   shared runs spread out and get headroom, at the price of fewer whole cards, which
   reservations (rule 7) keep whole-card runs from starving over. Cards a reservation
   counts on are used last when that lets a run start.
6. **Greedy.** Each run that fits now starts, and what it takes is subtracted before the
   next run is considered.
7. **Backfill that never starves the head.** A run R that cannot start gets a
   reservation: the earliest moment S at which it fits when what runyard runs hold is
   released in order of ``expected_end``. A holding without ``expected_end`` (no time
   limit; also runs started in this call without one) counts as ending *now*: the
   most protective assumption for R. A later run C that fits now starts only if, for
   every reservation, C ends by S (``now + time_limit_s <= S``) or R still fits at S
   with C's resources held on C's GPUs. Otherwise C waits (``waiting: would delay
   run 12 (higher priority), which needs 2 GPUs in 1h30m``).

   * If R does not fit even with everything runyard holds released (other users' memory
     or cards), S is infinite: R reserves nothing, since no runyard run can delay it.
   * Only the first :data:`MAX_RESERVATIONS` blocked runs reserve (each reservation
     costs a scan of the holdings, and every later candidate is checked against every
     reservation). Runs past the cap wait behind them unprotected: smaller runs may
     overtake them until they move up into the protected set.
   * A run held back only because it would delay a reservation reserves nothing itself;
     once that reservation is past it competes in queue order again.
   * Each reservation is computed on its own, ignoring the reservations ahead of it, so
     S may be optimistic for a run queued behind another blocked run; what it protects
     against is still exactly the runs behind it.

8. **Preemption.** A run that cannot start now, and would fit if some running
   ``preemptible`` runs of lower priority were stopped, gets them in
   ``Decision.preempt`` (lowest priority first, then the newest) and waits for them to
   go ("waiting: preempting run 5 (priority 0)"); a run is preempted for one run per call
   at most, and a run not marked preemptible never is.

Waiting reasons name the first missing resource (GPUs, then CPUs, memory, disk, named
resources in name order), with
numbers measured after this call's starts; a run held back by a reservation names the
run it would delay, what that run needs, and how long until it can start::

    waiting: needs 2 GPUs, 1 free, 1 unavailable
    waiting: needs 2 GPUs, 0 free, 1 in use outside runyard
    waiting: needs 1 GPU with 10G free, most free is 6G
    waiting: needs 2 GPUs with 10G free each, 1 has that much
    waiting: needs 4 CPUs, 1.5 free
    waiting: needs 16G memory, 9.5G free
    waiting: needs 20G disk, 3G free
    waiting: needs 2 nfs_io, 1 free
    waiting: would delay run 12 (higher priority), which needs 2 GPUs in 1h30m
    waiting: would delay run 12 (queued earlier), which needs 4 CPUs
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine._packing import CPU_EPSILON, IDLE_GPU_MEM_BYTES, Claim, Pool, earliest_fit, format_cpus, plural
from engine.envelope import Envelope
from engine.units import format_duration, format_size

__all__ = [
    "IDLE_GPU_MEM_BYTES",
    "MAX_RESERVATIONS",
    "BoxView",
    "Decision",
    "GpuView",
    "Holding",
    "Limit",
    "QueuedRun",
    "Start",
    "decide",
    "never_fits",
    "queue_order",
]


@dataclass(frozen=True)
class GpuView:
    """One GPU as admission sees it."""

    index: int
    mem_total: int
    """Bytes (``nvidia-smi --query-gpu=memory.total``)."""
    mem_foreign: int = 0
    """Bytes used by processes that are not in any runyard run."""
    foreign_procs: int = 0
    """Compute processes on the card that are not in any runyard run."""
    available: bool = True
    """False when the GPU is lost, excluded, or NVML cannot read it: never placed on."""
    unavailable_reason: str | None = None


@dataclass(frozen=True)
class BoxView:
    """The box as admission sees it: totals, and what others (not runyard) use."""

    cpus: float
    mem_total: int
    mem_foreign: int = 0
    """Bytes in use by processes outside runyard's runs (other users, the OS)."""
    disk_free: int = 1 << 60
    """Free bytes on the filesystem of runyard's home, as observed now."""
    gpus: tuple[GpuView, ...] = ()
    counted: tuple[tuple[str, int], ...] = ()
    """Capacities of the named counted resources the config declares (``[resources]
    nfs_io = 4`` gives ``(("nfs_io", 4),)``), one pair per name."""


@dataclass(frozen=True)
class Holding:
    """What one running run holds."""

    run_id: int
    envelope: Envelope
    gpus: tuple[int, ...] = ()
    expected_end: float | None = None
    """Start + time limit; ``None`` when the run has no limit (it may end at any moment
    or never: admission assumes the worst for each purpose)."""
    accounts: tuple[str, ...] = ()
    """As :attr:`QueuedRun.accounts`: what it holds counts against their limits."""
    priority: int = 0
    preemptible: bool = False
    """It may be stopped (and requeued) to let a run of higher priority start."""


@dataclass(frozen=True)
class QueuedRun:
    run_id: int
    envelope: Envelope
    priority: int = 0
    submitted_at: float = 0.0
    held: bool = False
    share: float = 0.0
    """The submitter's fair-share score: among equal priorities, lower goes first."""
    accounts: tuple[str, ...] = ()
    """Who the run counts against for limits (``"user alice"``, ``"group students"``)."""
    forbid: frozenset[int] = frozenset()
    """GPU indices the run may not get."""


@dataclass(frozen=True)
class Limit:
    """The most an account's running runs may hold at once; ``None``: no limit."""

    gpus: int | None = None
    cpus: float | None = None
    mem_bytes: int | None = None


@dataclass(frozen=True)
class Start:
    run_id: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Decision:
    starts: tuple[Start, ...] = ()
    """Runs to start now, in order, each with its concrete GPU indices."""
    waiting: Mapping[int, str] = field(default_factory=dict)
    """Every queued run not started, with a human reason beginning ``waiting:`` (or
    ``held``/``draining``)."""
    refused: Mapping[int, str] = field(default_factory=dict)
    """Queued runs that can never fit this box, with a one-line reason naming the resource."""
    preempt: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """Queued run -> the running preemptible runs to stop so that it can start (rule 8)."""


MAX_RESERVATIONS = 32
"""Blocked runs, in queue order, that hold a reservation against backfill."""

HELD_REASON = "held: release it with `runyard release {run_id}`"
DRAINING_REASON = "draining: the engine admits nothing new (runyard undrain)"


def never_fits(envelope: Envelope, box: BoxView) -> str | None:
    """Why ``envelope`` can never run on ``box`` even when it is empty, or ``None``.

    Only totals that do not change while the engine runs count: a GPU that is lost or
    busy now, or a full disk, is a reason to wait, not to refuse.
    """
    if envelope.gpus > len(box.gpus):
        return f"asks {plural(envelope.gpus, 'GPU')}; this box has {len(box.gpus)}"
    if envelope.gpu_mem_bytes is not None:
        wanted = envelope.gpu_mem_bytes
        # A card NVML cannot size reports 0 bytes; it may be big enough once readable.
        unknown = sum(card.mem_total <= 0 for card in box.gpus)
        known = [card.mem_total for card in box.gpus if card.mem_total > 0]
        big_enough = sum(size >= wanted for size in known)
        if big_enough + unknown < envelope.gpus:
            if not big_enough:
                return f"asks {format_size(wanted)} per GPU; the largest GPU here has {format_size(max(known))}"
            cards = "1 GPU here has" if big_enough == 1 else f"{big_enough} GPUs here have"
            return f"asks {envelope.gpus} GPUs with {format_size(wanted)} each; only {cards} that much"
    if envelope.cpus > box.cpus + CPU_EPSILON:
        return f"asks {plural(envelope.cpus, 'CPU')}; this box has {format_cpus(box.cpus)}"
    if envelope.mem_bytes > box.mem_total:
        return f"asks {format_size(envelope.mem_bytes)} memory; this box has {format_size(box.mem_total)}"
    if envelope.resources:
        capacity = dict(box.counted)
        for name, count in envelope.resources:
            if name not in capacity:
                configured = f"configured: {', '.join(sorted(capacity))}" if capacity else "none configured"
                return f"asks {name}={count}; no such resource is configured ({configured})"
            if count > capacity[name]:
                return f"asks {name}={count}; this box has {capacity[name]}"
    return None


def queue_order(run: QueuedRun) -> tuple[int, float, float, int]:
    """Sort key: highest priority, then lowest fair-share score, then earliest submitted,
    then lowest id."""
    return (-run.priority, run.share, run.submitted_at, run.run_id)


def decide(
    queue: Sequence[QueuedRun],
    holdings: Sequence[Holding],
    box: BoxView,
    now: float,
    *,
    draining: bool = False,
    limits: Mapping[str, Limit] | None = None,
) -> Decision:
    """Decide admissions by the rules in the module docstring.

    Args:
        queue: Queued runs, in any order; run ids must be unique.
        holdings: What runyard's running runs hold.
        box: Totals and other users' usage, as probed.
        now: The current Unix time; only compared with ``expected_end`` and time limits.
        draining: Start nothing (held and refused runs are still reported as such).
        limits: Per account (see :attr:`QueuedRun.accounts`), what its runs may hold.

    Returns:
        The starts in order with their GPUs, a reason for every other run.

    Raises:
        ValueError: Two queued runs share an id.
    """
    ids = [run.run_id for run in queue]
    if len(set(ids)) != len(ids):
        raise ValueError("admission got the same run id twice in the queue; pass each queued run once")
    return _Admission(holdings, box, now, limits or {}).run(sorted(queue, key=queue_order), draining)


@dataclass
class _Reservation:
    run: QueuedRun
    start_s: float
    pool_at_start: Pool
    """The box at ``start_s`` as promised to ``run``: ``run`` always fits in it. Backfilled
    runs still running at ``start_s`` are claimed here."""


class _Admission:
    """One call of :func:`decide`: the state that evolves as runs are walked in order."""

    def __init__(
        self, holdings: Sequence[Holding], box: BoxView, now: float, limits: Mapping[str, Limit] | None = None
    ) -> None:
        self.box = box
        self.now = now
        self.pool = Pool(box)
        self.releases: list[tuple[float, int, Claim]] = []
        self.limits = limits or {}
        self.used: dict[str, list[float]] = {}
        """Per limited account: GPUs, CPUs and memory its running runs (and this call's starts) hold."""
        self.preemptible: dict[int, Holding] = {}
        """Running runs that may still be preempted in this call."""
        for holding in holdings:
            self._hold(Claim.of(holding.envelope, holding.gpus), holding.expected_end)
            self._count(holding.accounts, holding.envelope)
            if holding.preemptible:
                self.preemptible[holding.run_id] = holding
        self.reservations: list[_Reservation] = []
        self.reserved_gpus: set[int] = set()

    def _hold(self, claim: Claim, end: float | None) -> None:
        self.pool.claim(claim)
        # No end, or an end already past (the run is being stopped): it may go at any moment.
        release_s = self.now if end is None else max(end, self.now)
        self.releases.append((release_s, len(self.releases), claim))

    def run(self, ordered: Sequence[QueuedRun], draining: bool) -> Decision:
        starts: list[Start] = []
        waiting: dict[int, str] = {}
        refused: dict[int, str] = {}
        unplaceable: list[QueuedRun] = []
        preempt: dict[int, tuple[int, ...]] = {}
        # Memos keep a 10,000-run queue of a few shapes cheap. Within one call resources only
        # shrink and reservations only accumulate, so a shape that did not fit cannot fit
        # later, and one that would delay a reservation would still delay it (at worst a
        # different card choice could have spared it: the memo errs on the safe side).
        refusals: dict[tuple, str | None] = {}
        no_fit: set[tuple] = set()
        delayed: dict[tuple, _Delay] = {}
        for run in ordered:
            envelope = run.envelope
            shape = _shape(envelope)
            if shape not in refusals:
                refusals[shape] = never_fits(envelope, self.box)
            if refusals[shape] is not None:
                refused[run.run_id] = refusals[shape]
                continue
            if run.held:
                waiting[run.run_id] = HELD_REASON.format(run_id=run.run_id)
                continue
            if draining:
                waiting[run.run_id] = DRAINING_REASON
                continue
            if run.accounts and self.limits:
                over = self._over_limit(run)
                if over is not None:
                    kind, text = over
                    (refused if kind == "refused" else waiting)[run.run_id] = text
                    continue
            if run.forbid:
                shape = (shape, run.forbid)
            gpus = None if shape in no_fit else self.pool.place(envelope, forbid=run.forbid)
            if gpus is None:
                no_fit.add(shape)
                victims = self._victims(run) if self.preemptible else ()
                if victims:
                    preempt[run.run_id] = victims
                    waiting[run.run_id] = "waiting: preempting " + ", ".join(
                        f"run {victim} (priority {self.preemptible[victim].priority})" for victim in victims
                    )
                    for victim in victims:
                        del self.preemptible[victim]
                    self._reserve(run)
                    continue
                waiting[run.run_id] = ""  # filled below, against the pool after every start
                unplaceable.append(run)
                self._reserve(run)
                continue
            timed_shape = (shape, envelope.time_limit_s)
            outcome = delayed.get(timed_shape) or self._admit(run, gpus)
            if isinstance(outcome, _Delay):
                delayed[timed_shape] = outcome
                waiting[run.run_id] = outcome.reason(run, self.now)
            else:
                starts.append(Start(run.run_id, outcome))
                self._count(run.accounts, envelope)
        shortfalls: dict[tuple, tuple[str, str] | None] = {}
        for run in unplaceable:
            shape = (_shape(run.envelope), run.forbid)
            if shape not in shortfalls:
                shortfalls[shape] = self.pool.shortfall(run.envelope, run.forbid)
            need_have = shortfalls[shape]
            waiting[run.run_id] = f"waiting: needs {need_have[0]}, {need_have[1]}" if need_have else "waiting"
        return Decision(starts=tuple(starts), waiting=waiting, refused=refused, preempt=preempt)

    def _reserve(self, run: QueuedRun) -> None:
        if len(self.reservations) >= MAX_RESERVATIONS:
            return
        found = earliest_fit(run.envelope, self.pool, self.releases, self.now, run.forbid)
        if found is None:
            return
        start_s, pool_at_start = found
        self.reservations.append(_Reservation(run, start_s, pool_at_start))
        self.reserved_gpus.update(pool_at_start.place(run.envelope, forbid=run.forbid) or ())

    def _admit(self, run: QueuedRun, gpus: tuple[int, ...]) -> tuple[int, ...] | _Delay:
        """Hold ``run``'s resources and return its GPUs, or why it would delay a reservation.

        ``gpus`` is the least loaded placement; if that delays someone, cards that no
        reservation counts on are tried before giving up.
        """
        envelope = run.envelope
        end = None if envelope.time_limit_s is None else self.now + envelope.time_limit_s
        claim = Claim.of(envelope, gpus)
        blocker = self._first_delayed(claim, end)
        if blocker is not None and envelope.gpus and self.reserved_gpus:
            spared = self.pool.place(envelope, avoid=self.reserved_gpus, forbid=run.forbid)
            if spared is not None and spared != gpus:
                spared_claim = Claim.of(envelope, spared)
                if self._first_delayed(spared_claim, end) is None:
                    blocker, claim = None, spared_claim
        if blocker is not None:
            # What the blocked run would lack at its start, with this run's share held.
            trial = blocker.pool_at_start.copy()
            trial.claim(claim)
            need_have = trial.shortfall(blocker.run.envelope)
            return _Delay(blocker, need_have[0] if need_have else blocker.run.envelope.describe())
        self._hold(claim, end)
        for reservation in self.reservations:
            if end is None or end > reservation.start_s:
                reservation.pool_at_start.claim(claim)
        return claim.gpus

    def _first_delayed(self, claim: Claim, end: float | None) -> _Reservation | None:
        for reservation in self.reservations:
            if end is not None and end <= reservation.start_s:
                continue
            if not reservation.pool_at_start.still_fits(reservation.run.envelope, claim, reservation.run.forbid):
                return reservation
        return None

    def _victims(self, run: QueuedRun) -> tuple[int, ...]:
        """The fewest preemptible runs of lower priority, lowest priority and newest first,
        whose stopping lets ``run`` fit now; ``()`` when none would."""
        candidates = sorted(
            (holding for holding in self.preemptible.values() if holding.priority < run.priority),
            key=lambda holding: (holding.priority, -holding.run_id),
        )
        if not candidates:
            return ()
        trial = self.pool.copy()
        chosen: list[Holding] = []
        for holding in candidates:
            trial.release(Claim.of(holding.envelope, holding.gpus))
            chosen.append(holding)
            if trial.fits(run.envelope, run.forbid):
                break
        else:
            return ()
        # Keep only those it needs: one taken for its CPUs may be spared once a later one
        # freed both CPUs and the GPU.
        for holding in list(chosen):
            trial.claim(Claim.of(holding.envelope, holding.gpus))
            if trial.fits(run.envelope, run.forbid):
                chosen.remove(holding)
            else:
                trial.release(Claim.of(holding.envelope, holding.gpus))
        return tuple(holding.run_id for holding in chosen)

    def _count(self, accounts: tuple[str, ...], envelope: Envelope) -> None:
        for account in accounts:
            if account in self.limits:
                used = self.used.setdefault(account, [0, 0.0, 0])
                used[0] += envelope.gpus
                used[1] += envelope.cpus
                used[2] += envelope.mem_bytes

    def _over_limit(self, run: QueuedRun) -> tuple[str, str] | None:
        """``("refused", why)`` when the run alone is over a limit of one of its accounts,
        ``("waiting", why)`` when it would be with what the account holds, else ``None``."""
        envelope = run.envelope
        for account in run.accounts:
            limit = self.limits.get(account)
            if limit is None:
                continue
            used = self.used.get(account, [0, 0.0, 0])
            for asked, held, cap, noun, show in (
                (envelope.gpus, used[0], limit.gpus, "GPU", None),
                (envelope.cpus, used[1], limit.cpus, "CPU", None),
                (envelope.mem_bytes, used[2], limit.mem_bytes, "memory", format_size),
            ):
                if cap is None or not asked:
                    continue

                def amount(value: float, noun: str = noun, show=show) -> str:
                    return plural(value, noun) if show is None else f"{show(value)} of memory"

                slack = CPU_EPSILON if noun == "CPU" else 0
                if asked > cap + slack:
                    return "refused", f"asks {amount(asked)}; {account} may hold at most {amount(cap)} at once"
                if held + asked > cap + slack:
                    possessive = f"{account}'" if account.endswith("s") else f"{account}'s"
                    held_text = format_cpus(held) if noun == "CPU" else (str(held) if show is None else show(held))
                    return "waiting", f"waiting: {possessive} limit is {amount(cap)} at once, {held_text} held"
        return None


def _shape(envelope: Envelope) -> tuple:
    """What decides whether an envelope fits now (its time limit does not)."""
    return (
        envelope.cpus,
        envelope.mem_bytes,
        envelope.gpus,
        envelope.gpu_mem_bytes,
        envelope.disk_bytes,
        envelope.resources,
    )


@dataclass(frozen=True)
class _Delay:
    """A run that fits now but would push back ``blocker``, which needs ``need`` at its start."""

    blocker: _Reservation
    need: str

    def reason(self, run: QueuedRun, now: float) -> str:
        ahead = self.blocker.run
        why = "higher priority" if ahead.priority > run.priority else "queued earlier"
        reason = f"waiting: would delay run {ahead.run_id} ({why}), which needs {self.need}"
        wait_s = self.blocker.start_s - now
        return reason + (f" in {format_duration(wait_s)}" if wait_s >= 1 else "")
