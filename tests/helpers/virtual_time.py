"""An asyncio event loop on virtual time: whenever it would wait for a timer, its clock jumps there.

Deadlines, `asyncio.wait_for` timeouts and `asyncio.sleep` run in exact virtual seconds and take
no real time, so a test can assert "failed within the 300 ms deadline" as an equality on
`loop.time()` instead of a wall-clock measurement that a loaded machine can break. Real I/O
(the self-pipe that `run_coroutine_threadsafe` uses) still wakes the loop: with no timer
pending it blocks on the selector as usual.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, Any]] = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # nothing scheduled: wait for real I/O (a call from another thread)
            return super().select(None)
        self._advance(timeout)  # the next timer is due now
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` starts at 0 and only moves to the next due timer."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_VirtualSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._virtual_now += seconds

    def time(self) -> float:
        return self._virtual_now
