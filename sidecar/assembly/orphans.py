"""Series whose receiving node died, on a shared journal (several sidecars, one PostgreSQL).

A node's quiet timers die with it. `adopt_orphans` completes series still "receiving" past their
route's quiet time plus the journal lease; `QuietGuard` keeps a node's own quiet timer from firing
while another node is still recording instances of the same series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from sidecar.assembly.assembler import SeriesAssembler
from sidecar.assembly.timers import Timers
from sidecar.journal.ports import InstanceLog

log = structlog.get_logger("sidecar.assembly.orphans")


def adopt_orphans(journal: InstanceLog, assembler: SeriesAssembler, quiet_s: Mapping[str, float],
                  lease_s: float, now: float) -> int:
    """Complete the series a node stopped receiving when it died; returns how many.

    A series still receiving a lease past its route's quiet time (its short-series grace while it
    is short of a known expected count) has no live owner; `complete` is conditional in the
    journal, so when nodes race, one wins.
    """
    n = 0
    for series in journal.series_in_state("receiving"):
        quiet = assembler.completion_wait_s(series)
        if quiet is None:
            quiet = quiet_s.get(series.route or "")
        if quiet is not None and now - series.last_received > quiet + lease_s:
            assembler.complete(series.series_uid, "quiet time elapsed (adopted from a stopped node)")
            n += 1
    if n:
        log.info("orphan_series_adopted", n=n)
    return n


class QuietGuard:
    """Timers for a shared journal: a quiet timer that fires while the series is still receiving
    (another node recorded an instance since it was armed) re-arms for the rest of the quiet time."""

    def __init__(self, inner: Timers, journal: InstanceLog, quiet_s: Mapping[str, float]) -> None:
        self._inner = inner
        self._journal = journal
        self._quiet_s = dict(quiet_s)

    def arm(self, key: str, delay_s: float, fn: Callable[[], None]) -> None:
        def guarded() -> None:
            row = self._journal.series(key)
            quiet = self._quiet_s.get(row.route or "") if row is not None else None
            if row is not None and row.state == "receiving" and quiet is not None:
                left = quiet - (self._inner.now() - row.last_received)
                if left > 0.01:
                    self._inner.arm(key, left, guarded)
                    return
            fn()

        self._inner.arm(key, delay_s, guarded)

    def cancel(self, key: str) -> None:
        self._inner.cancel(key)

    def now(self) -> float:
        return self._inner.now()
