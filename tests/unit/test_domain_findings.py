"""The domain verdict in Findings: an input outside the model's domain is not assessed, never alerted."""

from __future__ import annotations

from models.findings import NOT_ASSESSED_TEXT, Classification, DomainVerdict, Findings, ImageRef, Measurement

A = ImageRef("1.2.840.10008.5.1.4.1.1.4", "1.2.3.1")
B = ImageRef("1.2.840.10008.5.1.4.1.1.4", "1.2.3.2")


def _low(ref: ImageRef | None) -> Classification:
    return Classification("low", {"low": 0.9, "high": 0.1}, source=ref, uncertain=True)


def _findings(*verdicts: DomainVerdict) -> Findings:
    return Findings("m", "1", classifications=(_low(A), _low(B)), summary=_low(None),
                    measurements=(Measurement("x", 1.0, "1", A), Measurement("y", 2.0, "1", B)), domain=verdicts)


class TestDomainVerdict:
    def test_no_guard_means_assessed_and_alerts_as_before(self) -> None:
        """Without verdicts every uncertain classification (and the summary) is an alert."""
        f = _findings()
        assert f.assessed and len(f.alerts) == 3

    def test_out_of_domain_image_raises_no_alert(self) -> None:
        """The slice outside the domain and the series summary raise no alert; the other slice does."""
        f = _findings(DomainVerdict(False, 40.0, 10.0, A), DomainVerdict(True, 2.0, 10.0, B))
        assert not f.assessed
        assert [c.source for c in f.alerts] == [B]

    def test_job_level_verdict_covers_every_image(self) -> None:
        """A verdict without a source covers the whole job: nothing is alerted."""
        assert _findings(DomainVerdict(False, 40.0, 10.0)).alerts == ()

    def test_for_instance_keeps_its_own_verdict(self) -> None:
        """A streaming job's share of a batch keeps only its own verdict."""
        f = _findings(DomainVerdict(False, 40.0, 10.0, A), DomainVerdict(True, 2.0, 10.0, B))
        a, b = f.for_instance(A.sop_instance_uid), f.for_instance(B.sop_instance_uid)
        assert not a.assessed and a.alerts == ()
        assert b.assessed and len(b.alerts) == 1

    def test_assessed_only_drops_results_of_unassessed_images(self) -> None:
        """The suppress policy keeps the verdicts but no grade or measurement of the refused image."""
        f = _findings(DomainVerdict(False, 40.0, 10.0, A), DomainVerdict(True, 2.0, 10.0, B)).assessed_only()
        assert [c.source for c in f.classifications] == [B]
        assert [m.source for m in f.measurements] == [B]
        assert f.summary is None and len(f.domain) == 2

    def test_text_says_not_assessed(self) -> None:
        assert NOT_ASSESSED_TEXT.startswith("not assessed")
