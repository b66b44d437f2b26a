"""The SQLite backend: one file in WAL mode, one write connection, a few read connections.

Reads (the dashboard, metrics, `status`, the listener's duplicate check) go through their own
read-only connections, so a long dashboard query never holds the lock a C-STORE's journal write
waits on; WAL lets readers and the writer work at once, each read seeing the last commit.
Every write is one `BEGIN IMMEDIATE` transaction, so writers on the file (threads of this
process, or another process on the same machine) are serialised and a claim needs no row locks.
WAL with synchronous=NORMAL keeps the database consistent through any crash; a commit may be
lost only on power failure (see `sidecar.journal` for why that is covered).

A failed write never wedges the connection: when a statement or the COMMIT itself fails
("database or disk is full" fails at COMMIT, when the WAL grows), the transaction is rolled
back explicitly, since SQLite may or may not have rolled it back itself (sqlite.org/lang_transaction.html,
"Response To Errors Within A Transaction"); a transaction left open by a failed ROLLBACK is
closed before the next BEGIN. A full disk raises `JournalFull`: nothing of that write was kept,
and the same write succeeds once space returns.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from sidecar.errors import JournalError, JournalFull
from sidecar.journal.schema import ADDED_COLUMNS, SCHEMA_VERSION, SQLITE, Dialect
from sidecar.journal.tx import Tx

_log = structlog.get_logger("sidecar.journal")

PREFIX = "sqlite:///"

Connect = Callable[..., sqlite3.Connection]


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or (code is None and "database or disk is full" in str(exc))


def write_error(exc: sqlite3.Error) -> JournalError:
    """The journal error for a failed write: `JournalFull` when the disk is full."""
    if _is_full(exc):
        return JournalFull(f"journal write failed: {exc}")
    return JournalError(f"journal write failed: {exc}")


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

    def __init__(self, url: str, synchronous: str = "NORMAL", *, connect: Connect = sqlite3.connect) -> None:
        """`connect` opens the connection (`sqlite3.connect`; a test passes one that fails on cue)."""
        if synchronous not in ("NORMAL", "FULL"):
            raise JournalError("synchronous must be NORMAL or FULL")
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        self._connect = connect
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._opened: list[sqlite3.Connection] = []  # every read connection, to close them all
        self._closed = False
        self._readers_lock = threading.Lock()
        try:
            self._db = connect(str(path), check_same_thread=False, isolation_level=None)
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
            if self._db.in_transaction:  # an earlier ROLLBACK failed too: close that one first
                self._rollback()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise write_error(exc) from exc
            try:
                yield Tx(self._execute)
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise write_error(exc) from exc
                raise

    def _execute(self, sql: str, args: Sequence[object]) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(args))

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (it may, after SQLITE_FULL)."""
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # retried before the next BEGIN
            _log.error("journal_rollback_failed", error=str(exc)[:200])

    def _reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        conn = self._connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        with self._readers_lock:  # not the write lock: a read never waits for a write
            self._opened.append(conn)
        return conn

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One SELECT on a read connection (never waits for the write lock)."""
        if self._closed:
            raise JournalError("journal is closed")
        try:
            conn = self._reader()
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
        finally:
            self._readers.put(conn)

    def listen(self, callbacks: Mapping[str, Callable[[], None]]) -> None:
        """Nothing to listen to: one process per file, and it wakes its own threads."""

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for conn in self._opened:
                conn.close()
            self._db.close()
