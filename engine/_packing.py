"""Bookkeeping behind admission: a mutable picture of what is free, and GPU placement.

Private to :mod:`engine.policy`. A :class:`Pool` is cheap to copy so that admission can
keep one picture of *now* and one per reservation (*the box at time S*).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.envelope import Envelope
from engine.units import format_size

if TYPE_CHECKING:
    from engine.policy import BoxView, GpuView

IDLE_GPU_MEM_BYTES = 512 << 20
"""Foreign memory below which a card still counts as idle for an exclusive run: the
driver (a display server, a persistence daemon, a stray CUDA context) keeps a few hundred
MiB on a card that nobody computes on."""

CPU_EPSILON = 1e-9
"""Fractional CPUs are summed as floats; 0.1 + 0.2 must still fit in 0.3."""


@dataclass(frozen=True)
class Claim:
    """What one run takes from a pool, with its concrete GPUs."""

    cpus: float
    mem_bytes: int
    disk_bytes: int
    gpus: tuple[int, ...]
    exclusive: bool
    gpu_mem_bytes: int
    counted: tuple[tuple[str, int], ...] = ()
    """Named counted resources, as ``Envelope.resources``."""

    @classmethod
    def of(cls, envelope: Envelope, gpus: Sequence[int]) -> Claim:
        return cls(
            cpus=envelope.cpus,
            mem_bytes=envelope.mem_bytes,
            disk_bytes=envelope.disk_bytes,
            gpus=tuple(gpus),
            exclusive=envelope.exclusive_gpus,
            gpu_mem_bytes=envelope.gpu_mem_bytes or 0,
            counted=envelope.resources,
        )


def plural(count: float, word: str) -> str:
    """``1 GPU``, ``2 GPUs``, ``1.5 CPUs``."""
    return f"{count:g} {word}" + ("" if count == 1 else "s")


def format_cpus(cpus: float) -> str:
    # Subtracting float shares leaves noise such as 1.4999999999; nobody asks for 0.001 CPU.
    return f"{max(0.0, round(cpus, 2)):g}"


class Pool:
    """Free resources at one moment: scalars, named counts, and per-card runyard occupancy.

    Cards are addressed by position in ``BoxView.gpus``; claims name GPU *indices*, and a
    claim on an index the box no longer shows only takes its scalar resources. Likewise a
    claim on a counted resource the config no longer declares takes nothing: no queued run
    can ask for it (it is refused), so there is nothing to protect.
    """

    __slots__ = (
        "cpus", "mem_bytes", "disk_bytes", "_counted", "_cards", "_position", "_exclusive", "_shared_bytes", "_sharers"
    )

    def __init__(self, box: BoxView) -> None:
        self.cpus = float(box.cpus)
        self.mem_bytes = box.mem_total - box.mem_foreign
        self.disk_bytes = box.disk_free
        # Only runyard's runs consume these (nothing outside runyard can be seen taking a
        # licence), so free is capacity minus holdings; it goes negative if the config shrank.
        self._counted = dict(box.counted)
        self._cards: tuple[GpuView, ...] = box.gpus
        self._position = {card.index: position for position, card in enumerate(box.gpus)}
        self._exclusive = [0] * len(box.gpus)
        """Runyard runs holding the card whole (more than one only if the caller was inconsistent)."""
        self._shared_bytes = [0] * len(box.gpus)
        self._sharers = [0] * len(box.gpus)

    def copy(self) -> Pool:
        twin = Pool.__new__(Pool)
        twin.cpus, twin.mem_bytes, twin.disk_bytes = self.cpus, self.mem_bytes, self.disk_bytes
        twin._counted = self._counted.copy()
        twin._cards, twin._position = self._cards, self._position
        twin._exclusive = self._exclusive.copy()
        twin._shared_bytes = self._shared_bytes.copy()
        twin._sharers = self._sharers.copy()
        return twin

    def claim(self, claim: Claim) -> None:
        self._apply(claim, 1)

    def release(self, claim: Claim) -> None:
        self._apply(claim, -1)

    def _apply(self, claim: Claim, sign: int) -> None:
        self.cpus -= sign * claim.cpus
        self.mem_bytes -= sign * claim.mem_bytes
        self.disk_bytes -= sign * claim.disk_bytes
        for name, count in claim.counted:
            if name in self._counted:
                self._counted[name] -= sign * count
        for index in claim.gpus:
            position = self._position.get(index)
            if position is None:
                continue
            if claim.exclusive:
                self._exclusive[position] += sign
            else:
                self._shared_bytes[position] += sign * claim.gpu_mem_bytes
                self._sharers[position] += sign

    def _load(self, position: int) -> int:
        return self._cards[position].mem_foreign + self._shared_bytes[position]

    def _room(self, position: int) -> int:
        """Bytes a shared run could still reserve on the card (0 on a card held whole)."""
        card = self._cards[position]
        if not card.available or self._exclusive[position]:
            return 0
        return max(0, card.mem_total - self._load(position))

    def _idle(self, position: int) -> bool:
        card = self._cards[position]
        return (
            card.available
            and not self._exclusive[position]
            and not self._sharers[position]
            and card.mem_foreign < IDLE_GPU_MEM_BYTES
            and card.foreign_procs == 0
        )

    def _candidates(self, envelope: Envelope, forbid: Collection[int] = ()) -> list[int]:
        cards = self._cards
        if envelope.exclusive_gpus:
            return [p for p in range(len(cards)) if self._idle(p) and cards[p].index not in forbid]
        need = envelope.gpu_mem_bytes or 0
        return [p for p in range(len(cards))
                if cards[p].available and self._room(p) >= need and cards[p].index not in forbid]

    def _scalars_fit(self, envelope: Envelope) -> bool:
        return (
            envelope.cpus <= self.cpus + CPU_EPSILON
            and envelope.mem_bytes <= self.mem_bytes
            and envelope.disk_bytes <= self.disk_bytes
            and all(count <= self._counted.get(name, 0) for name, count in envelope.resources)
        )

    def place(
        self, envelope: Envelope, avoid: Collection[int] = (), forbid: Collection[int] = ()
    ) -> tuple[int, ...] | None:
        """GPU indices for ``envelope`` if it fits now (``()`` without GPUs), else ``None``.

        Least loaded cards first, ties by lower index; cards in ``avoid`` only when the
        others are not enough; cards in ``forbid`` never (set aside for a pool or a
        reservation the run is not part of).
        """
        if not self._scalars_fit(envelope):
            return None
        if envelope.gpus == 0:
            return ()
        candidates = self._candidates(envelope, forbid)
        if len(candidates) < envelope.gpus:
            return None
        cards = self._cards
        candidates.sort(key=lambda p: (cards[p].index in avoid, self._load(p), cards[p].index))
        return tuple(sorted(cards[p].index for p in candidates[: envelope.gpus]))

    def fits(self, envelope: Envelope, forbid: Collection[int] = ()) -> bool:
        return self.place(envelope, forbid=forbid) is not None

    def still_fits(self, envelope: Envelope, claim: Claim, forbid: Collection[int] = ()) -> bool:
        """Whether ``envelope``, which fits this pool, would still fit with ``claim`` held too."""
        if (
            envelope.cpus > self.cpus - claim.cpus + CPU_EPSILON
            or envelope.mem_bytes > self.mem_bytes - claim.mem_bytes
            or envelope.disk_bytes > self.disk_bytes - claim.disk_bytes
        ):
            return False
        if envelope.resources and claim.counted:
            taken = dict(claim.counted)
            if any(count > self._counted.get(name, 0) - taken.get(name, 0) for name, count in envelope.resources):
                return False
        if not envelope.gpus or not claim.gpus:
            return True  # the cards it fitted on are untouched
        self.claim(claim)
        try:
            return self.fits(envelope, forbid)
        finally:
            self.release(claim)

    def shortfall(self, envelope: Envelope, forbid: Collection[int] = ()) -> tuple[str, str] | None:
        """The first resource ``envelope`` lacks, as (what it needs, what there is), or ``None``.

        GPUs first, they are the scarce resource people watch; then CPUs, memory, disk,
        then named counted resources in name order.
        """
        if envelope.gpus:
            candidates = self._candidates(envelope, forbid)
            if len(candidates) < envelope.gpus:
                return self._gpu_shortfall(envelope, len(candidates), forbid)
        if envelope.cpus > self.cpus + CPU_EPSILON:
            return plural(envelope.cpus, "CPU"), f"{format_cpus(self.cpus)} free"
        if envelope.mem_bytes > self.mem_bytes:
            return f"{format_size(envelope.mem_bytes)} memory", f"{format_size(max(0, self.mem_bytes))} free"
        if envelope.disk_bytes > self.disk_bytes:
            return f"{format_size(envelope.disk_bytes)} disk", f"{format_size(max(0, self.disk_bytes))} free"
        for name, count in envelope.resources:
            if count > self._counted.get(name, 0):
                return f"{count} {name}", f"{max(0, self._counted.get(name, 0))} free"
        return None

    def _gpu_shortfall(self, envelope: Envelope, usable: int, forbid: Collection[int] = ()) -> tuple[str, str]:
        set_aside = sum(card.index in forbid for card in self._cards)
        positions = [p for p in range(len(self._cards)) if self._cards[p].index not in forbid]
        unavailable = sum(not self._cards[p].available for p in positions)
        if envelope.exclusive_gpus:
            need = plural(envelope.gpus, "GPU")
            have = f"{usable} free"
            # Cards kept busy by other users will not come free when runyard runs end: say so.
            foreign = sum(
                self._cards[p].available
                and not self._exclusive[p]
                and not self._sharers[p]
                and not self._idle(p)
                for p in positions
            )
            if foreign:
                have += f", {foreign} in use outside runyard"
        else:
            size = format_size(envelope.gpu_mem_bytes)
            most_free = format_size(max((self._room(p) for p in positions), default=0))
            if envelope.gpus == 1:
                need = f"1 GPU with {size} free"
                have = f"most free is {most_free}"
            else:
                need = f"{envelope.gpus} GPUs with {size} free each"
                if usable:
                    have = f"{usable} {'has' if usable == 1 else 'have'} that much"
                else:
                    have = f"none has that much, most free is {most_free}"
        if unavailable:
            have += f", {unavailable} unavailable"
        if set_aside:
            have += f", {set_aside} set aside (a pool or a reservation)"
        return need, have


def earliest_fit(
    envelope: Envelope, pool: Pool, releases: Sequence[tuple[float, int, Claim]], now: float,
    forbid: Collection[int] = (),
) -> tuple[float, Pool] | None:
    """The first moment ``envelope`` fits as ``releases`` (time, seq, claim) end, and the pool then.

    ``None`` when it does not fit even with every release applied: what stands in its way
    is not runyard's, so no runyard run can delay it.
    """
    at = pool.copy()
    if at.fits(envelope, forbid):
        return now, at
    ordered = sorted(releases, key=lambda release: (release[0], release[1]))
    i = 0
    while i < len(ordered):
        moment = ordered[i][0]
        # Releases at the same moment land together, so the order holdings came in is irrelevant.
        while i < len(ordered) and ordered[i][0] == moment:
            at.release(ordered[i][2])
            i += 1
        if at.fits(envelope, forbid):
            return moment, at
    return None
