"""Prometheus metrics of one sidecar, on its own `CollectorRegistry`.

Nothing here is process-global: tests run several sidecars in one process and each has its own
registry. Counters and histograms are fed by hooks (the listener's `StoreObserver`, the worker's
observer, the journal's event observer, the alert fan-out); the gauges that describe state
(series by state, queued jobs, outbox depth, dead letters) are read from the journal at scrape,
so they are right after a restart too.

Names (all prefixed `sidecar_`): instances_received_total, instances_refused_total{reason},
series{state}, jobs_queued{priority}, inference_seconds{model}, time_to_alert_seconds,
outbox_pending{destination}, outbox_failures_total{destination}, dead_letters{destination}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.alerts.fanout import Alert
from sidecar.errors import JournalError
from sidecar.journal import Event, Journal
from sidecar.pipeline.lanes import LaneStatus

#: forward passes run from ~10 ms (one slice) to seconds (a whole series on CPU)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: the LGE promise is "within a second": fine buckets below it, coarse above
ALERT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
SERIES_STATES = ("receiving", "complete", "unrouted")
PRIORITIES = (0, 10)  # streaming instance jobs, series jobs (assembly.assembler)


class JournalCollector(Collector):
    """State gauges read from the journal at each scrape."""

    def __init__(self, journal: Journal, destinations: Sequence[str] = ()) -> None:
        self.journal = journal
        self.destinations = tuple(destinations)

    def describe(self) -> list[Metric]:
        return []  # do not query the journal at registration

    def collect(self) -> Iterator[Metric]:
        try:
            summary = self.journal.summary()
            queued = self.journal.queued_jobs_by_priority()
        except JournalError:
            return  # a closed or broken journal: readiness says so; the scrape still answers
        series = GaugeMetricFamily("sidecar_series", "Series in the journal by state", labels=["state"])
        for state in sorted({*SERIES_STATES, *summary["series"]}):
            series.add_metric([state], summary["series"].get(state, 0))
        yield series
        jobs = GaugeMetricFamily("sidecar_jobs_queued", "Inference jobs waiting, by priority (0: streaming)",
                                 labels=["priority"])
        for priority in sorted({*PRIORITIES, *queued}):
            jobs.add_metric([str(priority)], queued.get(priority, 0))
        yield jobs
        states = GaugeMetricFamily("sidecar_jobs", "Inference jobs by state (quarantined: given up, replay by hand)",
                                   labels=["state"])
        for state in sorted({"queued", "running", "done", "failed", "quarantined", *summary["jobs"]}):
            states.add_metric([state], summary["jobs"].get(state, 0))
        yield states
        by_state: dict[str, dict[str, int]] = {"pending": {}, "dead": {}}
        for key, n in summary["outbox"].items():
            destination, _, state = key.rpartition("/")
            if state in by_state:
                by_state[state][destination] = n
        names = sorted({*self.destinations, *by_state["pending"], *by_state["dead"]})
        pending = GaugeMetricFamily("sidecar_outbox_pending", "Results waiting to be delivered, by destination",
                                    labels=["destination"])
        dead = GaugeMetricFamily("sidecar_dead_letters", "Results given up on (dead letters), by destination",
                                 labels=["destination"])
        for name in names:
            pending.add_metric([name], by_state["pending"].get(name, 0))
            dead.add_metric([name], by_state["dead"].get(name, 0))
        yield pending
        yield dead


class PartsCollector(Collector):
    """Per supervised part (worker lanes and processes, sender, assembler, alert fan-out): up, restarts."""

    def __init__(self, parts: Callable[[], Sequence[LaneStatus]]) -> None:
        self.parts = parts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sidecar_part_up", "1 while a supervised part runs, 0 while down", labels=["part"])
        restarts = CounterMetricFamily("sidecar_part_restarts", "Times a supervised part was restarted",
                                       labels=["part"])
        for part in self.parts():
            up.add_metric([part.name], 1.0 if part.up else 0.0)
            restarts.add_metric([part.name], part.restarts)
        yield up
        yield restarts


class Metrics:
    """The sidecar's collectors; implements the listener's `StoreObserver` and the hooks below."""

    def __init__(
        self, journal: Journal | None = None, destinations: Sequence[str] = (),
        registry: CollectorRegistry | None = None, *, process: bool = True,
        parts: Callable[[], Sequence[LaneStatus]] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "sidecar_instances_received", "Instances acknowledged with Success by C-STORE", registry=r)
        self.instances_refused = Counter(
            "sidecar_instances_refused", "C-STORE requests answered with a failure status, by reason",
            ["reason"], registry=r)
        self.inference_seconds = Histogram(
            "sidecar_inference_seconds", "Forward pass (prepare + predict) time, by model", ["model"],
            buckets=INFERENCE_BUCKETS, registry=r)
        self.time_to_alert = Histogram(
            "sidecar_time_to_alert_seconds", "From an instance's receipt to its QA alert's publication",
            buckets=ALERT_BUCKETS, registry=r)
        self.outbox_failures = Counter(
            "sidecar_outbox_failures", "Failed delivery attempts (retried or dead), by destination",
            ["destination"], registry=r)
        self.inputs_assessed = Counter(
            "sidecar_inputs_checked", "Inputs the models' domain guards checked, by model and verdict "
            "(in_domain, out_of_domain)", ["model", "verdict"], registry=r)
        for name in destinations:
            self.outbox_failures.labels(name)
        if process:
            ProcessCollector(namespace="sidecar", registry=r)  # sidecar_process_resident_memory_bytes, ...
        if journal is not None:
            r.register(JournalCollector(journal, destinations))
        if parts is not None:
            r.register(PartsCollector(parts))

    # -- hooks -----------------------------------------------------------------------------

    def instance_stored(self) -> None:
        self.instances_received.inc()

    def instance_refused(self, reason: str) -> None:
        self.instances_refused.labels(reason).inc()

    def inferred(self, model_id: str, seconds: float) -> None:
        self.inference_seconds.labels(model_id).observe(seconds)

    def domain_checked(self, model_id: str, in_domain: int, out_of_domain: int) -> None:
        """Counts one job's domain verdicts (an input outside the domain is "not assessed")."""
        if in_domain:
            self.inputs_assessed.labels(model_id, "in_domain").inc(in_domain)
        if out_of_domain:
            self.inputs_assessed.labels(model_id, "out_of_domain").inc(out_of_domain)

    def alert_raised(self, alert: Alert) -> None:
        if alert.received_at is not None and alert.raised_at:
            self.time_to_alert.observe(max(0.0, alert.raised_at - alert.received_at))

    def journal_event(self, event: Event) -> None:
        """Counts failed delivery attempts from the journal's `retry` and `dead` events.

        Their detail starts with "<destination>: " (destination names hold no colon).
        """
        if event.kind in ("retry", "dead"):
            self.outbox_failures.labels(event.detail.split(":", 1)[0]).inc()

    def exposition(self) -> bytes:
        """The text exposition format (what /metrics serves)."""
        return generate_latest(self.registry)


__all__ = ["ALERT_BUCKETS", "INFERENCE_BUCKETS", "JournalCollector", "Metrics"]
