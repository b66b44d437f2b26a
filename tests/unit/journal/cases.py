"""What the journal tests share: a fake clock and small builders of records and jobs."""

from __future__ import annotations

from sidecar.journal import InstanceRecord, Journal

LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _rec(sop: str, series: str = "1.2.3", expected: int | None = None) -> InstanceRecord:
    return InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.4", series, "1.2", "MR", f"/spool/{sop}.dcm", 10,
                          "CONSOLE", expected)


def _job(journal: Journal, instance: str = "", priority: int = 10, series: str = "1.2.3") -> int:
    jid = journal.enqueue_job(series_uid=series, instance_uid=instance, model_id="m", model_version="1",
                              revision=0, route="r", priority=priority)
    assert jid is not None
    return jid
