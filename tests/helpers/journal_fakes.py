"""Journal fakes: a SQLite connection that fails on cue, and a full disk for the journal.

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
