"""Readiness: named checks, each answering ok or not with a reason.

The sidecar is ready when its listener is bound, its models are loaded and warm, its journal
takes a durable write and its destinations answer C-ECHO. Checks run on a worker thread (they
touch the disk and the network); a slow one (the destination echo) is cached for a while so a
probe every few seconds does not open an association every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str = ""


CheckFn = Callable[[], Check]


class Readiness:
    """Runs every check; a check that raises counts as failed, with the exception as its reason."""

    def __init__(self, checks: Mapping[str, CheckFn]) -> None:
        self.checks = dict(checks)

    def run(self) -> dict[str, Check]:
        out: dict[str, Check] = {}
        for name, fn in self.checks.items():
            try:
                out[name] = fn()
            except Exception as exc:  # boundary: a broken check means "not ready", never a 500
                out[name] = Check(False, f"{type(exc).__name__}: {exc}"[:300])
        return out


class CachedCheck:
    """A check whose answer is reused for `ttl_s` seconds (a failure for `ttl_failed_s`)."""

    def __init__(self, fn: CheckFn, ttl_s: float = 30.0, ttl_failed_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fn, self.ttl_s, self.ttl_failed_s, self._clock = fn, ttl_s, ttl_failed_s, clock
        self._lock = threading.Lock()
        self._value: Check | None = None
        self._at = 0.0

    def __call__(self) -> Check:
        with self._lock:
            now = self._clock()
            if self._value is not None:
                ttl = self.ttl_s if self._value.ok else self.ttl_failed_s
                if now - self._at < ttl:
                    return self._value
            self._value, self._at = self.fn(), now
            return self._value


__all__ = ["CachedCheck", "Check", "CheckFn", "Readiness"]
