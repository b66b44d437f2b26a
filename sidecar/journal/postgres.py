"""The PostgreSQL backend: one journal shared by several sidecars on several hosts.

`pip install .[postgres]` brings psycopg 3; it is imported only when a `postgresql://` URL is
opened, so the default install never needs it. Each sidecar keeps a small pool of connections
(autocommit; a journal write is one explicit transaction) and one more connection that LISTENs,
so a job queued or a result owed on one node wakes the workers and senders of the others at once
instead of at their next poll. Claims use `SELECT ... FOR UPDATE SKIP LOCKED` (`Dialect`), so two
nodes never take the same row and never wait for each other's claims.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import structlog

from sidecar.errors import JournalError, JournalFull
from sidecar.journal.schema import ADDED_COLUMNS, POSTGRES, SCHEMA_VERSION, Dialect, statements
from sidecar.journal.tx import Tx

_log = structlog.get_logger("sidecar.journal")

PREFIXES = ("postgresql://", "postgres://")
_SCHEMA_LOCK = 0x51DECA8  # pg_advisory_xact_lock key: two nodes starting at once create tables once
LISTEN_TIMEOUT_S = 0.5
_DISK_FULL = "53100"  # SQLSTATE disk_full (PostgreSQL appendix A); psycopg's errors.DiskFull


def _psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError as exc:
        raise JournalError(
            "a postgresql:// journal needs psycopg 3: pip install 'dicom-ai-sidecar[postgres]'"
        ) from exc
    return psycopg


def _pg(sql: str) -> str:
    """The journal writes `?` placeholders (SQLite's); psycopg wants `%s`."""
    return sql.replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for errors and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}{sep}{cred.split(':', 1)[0]}:***@{host}"
    return url


class PostgresBackend:
    """A shared journal; `shared` is True."""

    dialect: Dialect = POSTGRES
    shared = True

    def __init__(self, url: str, pool_size: int = 4, connect_timeout_s: float = 10.0) -> None:
        self._pg = _psycopg()
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max(1, pool_size))
        self._closed = False
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for stmt in statements(self.dialect):
                    conn.execute(stmt)
                for table, columns in ADDED_COLUMNS.items():  # a journal made by an older version
                    for name, kind in columns:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name}"
                                     f" {kind.format(real=self.dialect.real)}")
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
        except self._pg.Error as exc:
            raise JournalError(f"cannot open journal at {redact(url)}: {exc}") from exc

    def _connect(self) -> Any:
        return self._pg.connect(self._url, autocommit=True, connect_timeout=int(self._connect_timeout_s))

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise JournalError("journal is closed")
        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                if conn.broken or conn.closed or self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self._connection() as conn, conn.transaction():
                tx = Tx(lambda sql, args: conn.execute(_pg(sql), args))
                yield tx
                for channel in sorted(tx.channels):  # delivered by PostgreSQL at commit
                    conn.execute("SELECT pg_notify(%s, '')", (channel,))
        except self._pg.Error as exc:
            kind = JournalFull if getattr(exc, "sqlstate", None) == _DISK_FULL else JournalError
            raise kind(f"journal write failed: {type(exc).__name__}: {exc}") from exc

    def query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connection() as conn:
                rows: list[tuple[Any, ...]] = conn.execute(_pg(sql), args).fetchall()
                return rows
        except self._pg.Error as exc:
            raise JournalError(f"journal read failed: {type(exc).__name__}: {exc}") from exc

    # -- LISTEN/NOTIFY ----------------------------------------------------------------------

    def listen(self, callbacks: Mapping[str, Callable[[], None]]) -> None:
        """Call `callbacks[channel]()` on each NOTIFY on `channel` (a thread; reconnects)."""
        if self._listener is not None or not callbacks:
            return
        self._listener = threading.Thread(target=self._listen, args=(dict(callbacks),),
                                          name="journal-listen", daemon=True)
        self._listener.start()

    def _listen(self, callbacks: dict[str, Callable[[], None]]) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._connect()
                for channel in callbacks:  # constants from Journal, never user input
                    conn.execute(f"LISTEN {channel}")
                for wake in callbacks.values():  # what was notified while we were not listening
                    wake()
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=LISTEN_TIMEOUT_S):
                        woken = callbacks.get(note.channel)
                        if woken is not None:
                            woken()
            except self._pg.Error as exc:
                if not self._stop.is_set():
                    _log.warning("journal_listen_lost", error_type=type(exc).__name__, error=str(exc)[:200])
                    self._stop.wait(1.0)
            finally:
                if conn is not None:
                    conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(LISTEN_TIMEOUT_S + 2.0)
            self._listener = None
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
