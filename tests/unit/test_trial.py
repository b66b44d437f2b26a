"""The silent-trial report (sidecar/trial.py) from journal rows."""

from __future__ import annotations

from sidecar.trial import facts, render, summarise

SERIES = "1.2.826.0.1.3680043.8.498.111122223333444455556666"


def _row(job_id: int, *, model: str = "lge_qa", route: str = "lge-trial", state: str = "done",
         alerts: int = 0, ood: str = "0/1", latency: float = 0.5) -> tuple[object, ...]:
    detail = f"1 objects; job={job_id} model={model} live=0 alerts={alerts} ood={ood}"
    return (job_id, SERIES, f"{SERIES}.{job_id}", model, route, state, 100.0, 100.0 + latency, detail, alerts)


class TestTrialReport:
    def test_rates_latency_and_cases_per_model(self) -> None:
        """Volume, would-be alert rate, out-of-domain rate, latency percentiles and the cases to review."""
        rows = [_row(1, alerts=1), _row(2, ood="1/1"), _row(3), _row(4, state="failed"),
                _row(5, model="gout_mtp1", route="gout", latency=2.0)]
        gout, lge = summarise(rows)  # sorted by model id
        assert (lge.jobs, lge.done, lge.failed, lge.alert_jobs, lge.out_of_domain, lge.inputs) == (4, 3, 1, 1, 1, 3)
        assert lge.alert_rate == 1 / 3 and lge.out_of_domain_rate == 1 / 3
        assert [c.job_id for c in lge.cases] == [1, 2]
        assert gout.latency_percentiles()["p50"] == 2.0

    def test_only_trial_routes_are_reported(self) -> None:
        assert [t.model_id for t in summarise([_row(1), _row(2, model="x", route="live")], {"lge-trial"})] == ["lge_qa"]

    def test_report_shows_short_uids_only(self) -> None:
        text = render(summarise([_row(7, alerts=1)]))
        assert "would-be alert rate: 100.0 %" in text and SERIES not in text and "job 7" in text

    def test_job_without_facts_counts_one_input(self) -> None:
        row = list(_row(1))
        row[8] = None
        (t,) = summarise([tuple(row)])
        assert t.inputs == 1 and t.out_of_domain == 0

    def test_facts_parse_key_values(self) -> None:
        assert facts("2 objects; job=4 ood=1/3") == {"job": "4", "ood": "1/3"}

    def test_no_jobs_says_so(self) -> None:
        assert render([]).startswith("no jobs")
