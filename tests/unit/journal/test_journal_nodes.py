"""The journal shared by several sidecars (nodes): claims and leases, the outbox across nodes, and
PostgreSQL's wake-ups. Claims and outbox run on both backends (several processes on one machine
share a SQLite journal too); wake-ups are PostgreSQL's LISTEN/NOTIFY alone.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from sidecar.journal import Journal
from tests.unit.journal.cases import LEASE_S, Clock, _job, _rec


class TestClaimsAcrossNodes:
    def test_two_nodes_never_claim_the_same_job(self, open_node: Callable[[str], Journal]) -> None:
        """Each queued job goes to exactly one node."""
        a, b = open_node("a"), open_node("b")
        a.record_instance(_rec("1.1"))
        first, second = _job(a, "1.1", priority=0), _job(a, "")
        got_a, got_b = a.claim_job(), b.claim_job()
        assert got_a is not None and got_b is not None
        assert {got_a.id, got_b.id} == {first, second}
        assert a.claim_job() is None and b.claim_job() is None

    def test_job_of_a_dead_node_is_reclaimed_after_its_lease(
        self, open_node: Callable[[str], Journal], clock: Clock
    ) -> None:
        """A running job whose node stopped renewing is taken over once the lease runs out."""
        a, b = open_node("a"), open_node("b")
        a.record_instance(_rec("1.1"))
        jid = _job(a)
        assert a.claim_job() is not None
        clock.t += LEASE_S - 1
        assert b.claim_job() is None
        clock.t += 2
        again = b.claim_job()
        assert again is not None and again.id == jid and again.attempts == 2
        assert "reclaimed" in [e.kind for e in b.events("1.2.3")]

    def test_renewed_lease_keeps_a_long_job_with_its_node(
        self, open_node: Callable[[str], Journal], clock: Clock
    ) -> None:
        """The heartbeat's renewal stops a live node's long job from being taken over."""
        a, b = open_node("a"), open_node("b")
        a.record_instance(_rec("1.1"))
        _job(a)
        assert a.claim_job() is not None
        clock.t += LEASE_S - 1
        assert a.renew_leases() == 1
        clock.t += 2
        assert b.claim_job() is None

    def test_recover_frees_only_this_nodes_claims(self, open_node: Callable[[str], Journal]) -> None:
        """A node starting up leaves the jobs another live node is running alone."""
        a, b = open_node("a"), open_node("b")
        a.record_instance(_rec("1.1"))
        _job(a)
        assert a.claim_job() is not None
        assert b.recover() == 0
        assert a.recover() == 1

    def test_series_is_completed_by_one_node_only(self, open_node: Callable[[str], Journal]) -> None:
        """Two nodes' quiet timers firing for one series: one completion, one timeline entry."""
        a, b = open_node("a"), open_node("b")
        a.record_instance(_rec("1.1"))
        assert a.mark_complete("1.2.3", "quiet") is True
        assert b.mark_complete("1.2.3", "quiet") is False
        assert [e.kind for e in a.events("1.2.3")].count("complete") == 1

    def test_concurrent_claims_take_each_job_once(self, open_node: Callable[[str], Journal]) -> None:
        """Threads of two nodes claiming at once never share a job and leave none behind."""
        nodes = [open_node("a"), open_node("b")]
        nodes[0].record_instance(_rec("1.1"))
        wanted = {_job(nodes[0], f"1.1.{i}", priority=0) for i in range(40)}
        taken: list[int] = []
        lock = threading.Lock()

        def drain(j: Journal) -> None:
            while (job := j.claim_job()) is not None:
                with lock:
                    taken.append(job.id)
                j.complete_job(job.id, [])

        threads = [threading.Thread(target=drain, args=(nodes[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(taken) == sorted(wanted)

    def test_concurrent_ingest_of_one_series_counts_every_instance_once(
        self, open_node: Callable[[str], Journal]
    ) -> None:
        """Two nodes receiving one series (with resends) count each instance once; one is first."""
        nodes = [open_node("a"), open_node("b")]
        results: list[tuple[bool, bool]] = []
        lock = threading.Lock()

        def send(j: Journal, offset: int) -> None:
            for i in range(20):
                r = j.record_instance(_rec(f"1.1.{(i + offset) % 20}"))
                with lock:
                    results.append((r.new, r.first_of_series))

        threads = [threading.Thread(target=send, args=(nodes[i % 2], i * 5)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        counts = Counter(results)
        assert counts[(True, True)] == 1 and counts[(True, False)] == 19
        row = nodes[0].series("1.2.3")
        assert row is not None and row.n_instances == 20


class TestOutboxAcrossNodes:
    def _owed(self, journal: Journal) -> int:
        journal.record_instance(_rec("1.1"))
        jid = _job(journal)
        journal.complete_job(jid, [("pacs", "9.9", "/r/9.9.dcm")])
        return journal.outbox()[0].id

    def test_due_item_is_sent_by_one_node_at_a_time(self, open_node: Callable[[str], Journal]) -> None:
        """An item one node is sending is not due for another; it stays due for its own node."""
        a, b = open_node("a"), open_node("b")
        item = self._owed(a)
        assert [i.id for i in a.due_outbox("pacs")] == [item]
        assert b.due_outbox("pacs") == []
        assert [i.id for i in a.due_outbox("pacs")] == [item]

    def test_item_of_a_dead_node_is_taken_over_after_its_lease(
        self, open_node: Callable[[str], Journal], clock: Clock
    ) -> None:
        """A node that died mid-send loses its outbox claim when the lease runs out."""
        a, b = open_node("a"), open_node("b")
        item = self._owed(a)
        assert a.due_outbox("pacs")
        assert b.next_due_at("pacs") == pytest.approx(clock.t + LEASE_S)
        clock.t += LEASE_S + 1
        assert [i.id for i in b.due_outbox("pacs")] == [item]
        b.mark_sent(item)
        assert a.due_outbox("pacs") == [] and a.series_delivered("1.2.3")

    def test_retried_item_is_free_for_any_node(self, open_node: Callable[[str], Journal], clock: Clock) -> None:
        """After a failed attempt the item belongs to nobody; whichever node is due first sends it."""
        a, b = open_node("a"), open_node("b")
        item = self._owed(a)
        assert a.due_outbox("pacs")
        a.mark_retry(item, "refused", next_attempt_at=clock.t + 5)
        assert b.next_due_at("pacs") == pytest.approx(clock.t + 5)
        clock.t += 5
        assert [i.id for i in b.due_outbox("pacs")] == [item]


class TestWakeUps:
    def test_job_queued_on_one_node_wakes_another(self, pg_url: str) -> None:
        """PostgreSQL NOTIFY reaches the other node's callback (SQLite has no LISTEN/NOTIFY)."""
        woken = threading.Event()
        a = Journal(pg_url, node="a")
        b = Journal(pg_url, node="b")
        try:
            b.on_remote_work(jobs=woken.set, results=lambda: None)
            assert woken.wait(5)  # the catch-up call when listening starts
            woken.clear()
            a.record_instance(_rec("1.1"))
            _job(a)
            assert woken.wait(5)
        finally:
            a.close()
            b.close()
