"""Journal fakes: a journal whose calls fail on cue, a SQLite connection that fails on cue, a full disk.

`FailingJournal` is the failing fake at the journal seam: any method of any of the journal's
Protocols (`sidecar.journal.ports`) can be made to fail.

`FailingConnection` is a real `sqlite3.Connection` (passed as `factory=`) whose `execute` raises
the error SQLite gives for a full disk on the statements a test names, without doing them, so
a COMMIT that "fails" leaves its transaction open exactly as SQLite may after SQLITE_FULL.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import JournalFull
from sidecar.journal import Journal
from sidecar.journal.ports import PORTS

FULL = "database or disk is full"


class FailingConnection(sqlite3.Connection):
    """`fail_next[sql_word] = n`: the next n statements starting with that word raise SQLITE_FULL."""

    fail_next: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_next = {}

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        word = sql.split(None, 1)[0].upper() if sql.strip() else ""
        left = self.fail_next.get(word, 0)
        if left > 0:
            self.fail_next[word] = left - 1
            raise sqlite3.OperationalError(FULL)
        return super().execute(sql, parameters)


def failing_connect() -> tuple[Callable[..., sqlite3.Connection], list[FailingConnection]]:
    """A `connect` for `SqliteBackend` and the list the connections it opens are put in."""
    opened: list[FailingConnection] = []

    def connect(path: str, **kwargs: Any) -> sqlite3.Connection:
        conn = sqlite3.connect(path, factory=FailingConnection, **kwargs)
        assert isinstance(conn, FailingConnection)
        opened.append(conn)
        return conn

    return connect, opened


@contextmanager
def small_disk(mount_point: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` at `mount_point` (root only), unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()[:200]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk is full; remove it to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 64)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def port_methods() -> dict[str, str]:
    """Each method of the journal's Protocols and the Protocol it belongs to (first one named)."""
    out: dict[str, str] = {}
    for port in PORTS:
        for name in getattr(port, "__protocol_attrs__", None) or [
            n for n in vars(port) if not n.startswith("_") and callable(vars(port)[n])
        ]:
            out.setdefault(name, port.__name__)
    return out


class FailingJournal(Journal):
    """A real journal any of whose Protocol methods fails on cue: the failing fake for every port.

    `fail("enqueue_job", times=2)` makes the next two calls of that method raise (`JournalFull`
    by default, or the `error` given) without touching the database; other calls go through.
    Being a `Journal`, it is an `InstanceLog`, a `JobQueue`, a `ResultOutbox`, an `AlertLedger`
    and a `Timeline` at once, so it goes wherever any of them, or the whole journal, is taken.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cues: dict[str, list[BaseException]] = {}
        self.calls: list[str] = []  # Protocol methods called, in order (failed ones included)

    def fail(self, method: str, times: int = 1, error: BaseException | None = None) -> None:
        if method not in port_methods():
            raise ValueError(f"{method!r} is no method of the journal's Protocols")
        err = error if error is not None else JournalFull(f"journal write failed: {FULL} (fake, {method})")
        self._cues.setdefault(method, []).extend([err] * times)

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or name not in _PORT_METHODS:
            return attr
        cues: dict[str, list[BaseException]] = super().__getattribute__("_cues")
        calls: list[str] = super().__getattribute__("calls")

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            pending = cues.get(name)
            if pending:
                raise pending.pop(0)
            return attr(*args, **kwargs)

        return call


_PORT_METHODS = frozenset(port_methods())
