"""`sidecar trial report`: what a model did on real traffic during its silent trial.

A route with `live: false` runs its model on everything it matches; results and would-be alerts
are kept (results store, journal, dashboard) and nothing goes to the PACS or the console. This
report is how a site decides to switch the model on: per model, the volume, the would-be alert
rate, the share of inputs outside the model's validated domain (not assessed), the latency from
enqueue to done (percentiles), the failures, and the cases to review (short UIDs only, never
patient data), read from the journal (`Journal.trial_rows`; the worker's "inferred" events carry
``job=… model=… live=… alerts=… ood=a/b``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_FACTS = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class TrialCase:
    """One job a person should look at: it would have alerted, or an input was not assessed."""

    job_id: int
    series: str  # truncated Series Instance UID
    instance: str  # truncated SOP Instance UID ('' for a series job)
    why: str


@dataclass
class ModelTrial:
    """One model's trial figures."""

    model_id: str
    routes: set[str] = field(default_factory=set)
    jobs: int = 0
    done: int = 0
    failed: int = 0
    alert_jobs: int = 0
    inputs: int = 0
    out_of_domain: int = 0
    latencies_s: list[float] = field(default_factory=list)
    cases: list[TrialCase] = field(default_factory=list)

    @property
    def alert_rate(self) -> float:
        return self.alert_jobs / self.done if self.done else 0.0

    @property
    def out_of_domain_rate(self) -> float:
        return self.out_of_domain / self.inputs if self.inputs else 0.0

    def latency_percentiles(self) -> dict[str, float]:
        if not self.latencies_s:
            return {}
        q = np.percentile(np.asarray(self.latencies_s), [50, 90, 99])
        return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}


def _short(uid: str) -> str:
    return uid[-12:] if uid else ""


def facts(detail: str | None) -> dict[str, str]:
    """The key=value facts of an "inferred" event's detail."""
    return dict(_FACTS.findall(detail or ""))


def summarise(rows: Iterable[Sequence[Any]], routes: set[str] | None = None, max_cases: int = 20) -> list[ModelTrial]:
    """Per-model trial figures from `Journal.trial_rows`; only jobs of `routes` when given."""
    out: dict[str, ModelTrial] = {}
    for job_id, series_uid, instance_uid, model_id, route, state, created, finished, detail, n_alerts in rows:
        if routes is not None and route not in routes:
            continue
        m = out.setdefault(str(model_id), ModelTrial(str(model_id)))
        m.routes.add(str(route))
        m.jobs += 1
        if state == "failed":
            m.failed += 1
            continue
        if state != "done":
            continue
        m.done += 1
        if finished is not None and created is not None:
            m.latencies_s.append(max(0.0, float(finished) - float(created)))
        f = facts(detail)
        ood, _, n_inputs = f.get("ood", "0/1").partition("/")
        n_ood = int(ood) if ood.isdigit() else 0
        m.out_of_domain += n_ood
        m.inputs += int(n_inputs) if n_inputs.isdigit() else 1
        alerted = int(n_alerts or 0) > 0
        m.alert_jobs += alerted
        why = [w for w, hit in (("would-be alert", alerted), (f"{n_ood} input(s) not assessed", n_ood > 0)) if hit]
        if why and len(m.cases) < max_cases:
            m.cases.append(TrialCase(int(job_id), _short(str(series_uid)), _short(str(instance_uid)), "; ".join(why)))
    return sorted(out.values(), key=lambda t: t.model_id)


def render(trials: Sequence[ModelTrial]) -> str:
    """The report as text (what `sidecar trial report` prints)."""
    if not trials:
        return "no jobs of trial routes in the journal"
    lines: list[str] = []
    for t in trials:
        lat = t.latency_percentiles()
        lat_text = ", ".join(f"{k} {v:.2f} s" for k, v in lat.items()) or "n/a"
        lines += [
            f"model {t.model_id} (routes: {', '.join(sorted(t.routes))})",
            f"  volume: {t.jobs} jobs ({t.done} done, {t.failed} failed), {t.inputs} inputs",
            f"  would-be alert rate: {100 * t.alert_rate:.1f} % of done jobs ({t.alert_jobs})",
            f"  outside the validated input domain: {100 * t.out_of_domain_rate:.1f} % of inputs ({t.out_of_domain})",
            f"  latency, enqueued to done: {lat_text}",
            f"  cases to review: {len(t.cases)}" + (" (first shown)" if t.cases else ""),
        ]
        lines += [f"    job {c.job_id} series …{c.series}" + (f" image …{c.instance}" if c.instance else "")
                  + f": {c.why}" for c in t.cases]
    return "\n".join(lines)


def trial_route_names(routes: Iterable[Any]) -> set[str]:
    """The names of the routes in silent trial (`live: false`)."""
    return {r.name for r in routes if not getattr(r, "live", True)}


__all__ = ["ModelTrial", "TrialCase", "facts", "render", "summarise", "trial_route_names"]

