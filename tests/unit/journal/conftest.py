"""Fixtures of the journal tests: a fresh journal URL on each backend (SQLite, and PostgreSQL from a
throwaway cluster, a fresh database per test), named nodes on one fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.journal import Journal
from tests.helpers.postgres import require_postgres
from tests.unit.journal.cases import LEASE_S, Clock


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty journal URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'j.sqlite'}"
    return require_postgres().fresh_url()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_node(journal_url: str, clock: Clock) -> Iterator[Callable[[str], Journal]]:
    """Open the journal as a named node (a sidecar); all are closed at the end."""
    opened: list[Journal] = []

    def _open(node: str) -> Journal:
        j = Journal(journal_url, clock=clock, node=node, lease_s=LEASE_S, heartbeat_s=0)
        opened.append(j)
        return j

    yield _open
    for j in opened:
        j.close()


@pytest.fixture
def journal(open_node: Callable[[str], Journal]) -> Journal:
    return open_node("a")


@pytest.fixture
def pg_url() -> str:
    """A fresh, empty PostgreSQL journal URL (for what only a shared journal does)."""
    return require_postgres().fresh_url()
