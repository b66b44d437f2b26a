"""One journal transaction as the backends hand it to `Journal`: statements, events, wake-ups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sidecar.journal.records import Event


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx:
    """Statements run in one transaction; timeline events and wake-up channels are collected
    here and acted on only after the commit (observers are told, NOTIFY is sent)."""

    def __init__(self, execute: Callable[[str, Sequence[object]], Cursor]) -> None:
        self._execute = execute
        self.events: list[Event] = []
        self.channels: set[str] = set()

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        return self._execute(sql, args)

    def notify(self, channel: str) -> None:
        """Wake the other nodes listening on `channel` once this transaction commits."""
        self.channels.add(channel)
