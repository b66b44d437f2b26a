"""The SQLite backend: one file in WAL mode, one connection, one lock, short transactions.

Every write is one `BEGIN IMMEDIATE` transaction, so writers on the file (threads of this
process, or another process on the same machine) are serialised and a claim needs no row locks.
WAL with synchronous=NORMAL keeps the database consistent through any crash; a commit may be
lost only on power failure (see `sidecar.journal` for why that is covered).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from sidecar.errors import JournalError
from sidecar.journal.schema import ADDED_COLUMNS, SCHEMA_VERSION, SQLITE, Dialect
from sidecar.journal.tx import Tx

PREFIX = "sqlite:///"


def sqlite_path(url: str) -> Path:
    """The file path of a `sqlite:///...` URL (three slashes then a relative or absolute path)."""
    if not url.startswith(PREFIX):
        raise JournalError(
            f"unsupported journal URL {url.split(':', 1)[0]!r}: expected sqlite:///PATH or postgresql://..."
        )
    return Path(url[len(PREFIX):])


class SqliteBackend:
    """A journal file on this machine; `shared` is False (one sidecar per file)."""

    dialect: Dialect = SQLITE
    shared = False

    def __init__(self, url: str, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise JournalError("synchronous must be NORMAL or FULL")
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(self.dialect.ddl())
            self._migrate()
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),)
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal at {path}: {exc}") from exc
        self._lock = threading.RLock()

    def _migrate(self) -> None:
        """Add the columns a version-1 file lacks (ALTER TABLE ADD COLUMN keeps every row)."""
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.format(real=self.dialect.real)}")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self._db.execute)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"journal write failed: {exc}") from exc

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:  # type: ignore[type-arg]
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal read failed: {exc}") from exc

    def listen(self, callbacks: Mapping[str, Callable[[], None]]) -> None:
        """Nothing to listen to: one process per file, and it wakes its own threads."""

    def close(self) -> None:
        with self._lock:
            self._db.close()
