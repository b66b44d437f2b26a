"""The worker's warm-up: models' first forward pass and the result writers' cold path are paid
before the first job, and a warm-up that fails never stops the worker."""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from sidecar.journal import Journal
from sidecar.pipeline.warmup import synthetic_source, warm_up
from sidecar.pipeline.worker import Worker
from sidecar.routing.rules import Route
from tests.helpers.models import BrightnessModel


class CountingModel(BrightnessModel):
    def __init__(self) -> None:
        super().__init__()
        self.warmed = 0

    def warm_up(self) -> None:
        self.warmed += 1


class BrokenWarmUp(BrightnessModel):
    def warm_up(self) -> None:
        raise RuntimeError("no backend yet")


def test_synthetic_source_carries_no_patient_values() -> None:
    ds = synthetic_source()
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
    assert ds.Rows == 8 and len(ds.PixelData) == 8 * 8 * 2


def test_warm_up_runs_each_model_and_makes_the_next_sr_build_cheap() -> None:
    from models.findings import Classification, Findings, ImageRef
    from sidecar.results import build_results

    model = CountingModel()
    warm_up({"brightness": model})
    assert model.warmed == 1
    src = synthetic_source()
    card = model.card
    item = Classification(card.labels[0], dict.fromkeys(card.labels, 0.5),
                          ImageRef(str(src.SOPClassUID), str(src.SOPInstanceUID)))
    t0 = time.perf_counter()
    [sr] = build_results(Findings(card.id, card.version, classifications=(item,)), [src], card, ["sr"],
                         input_uid=str(src.SOPInstanceUID), kind="instance")
    assert sr.Modality == "SR"
    assert time.perf_counter() - t0 < 0.5  # cold, the first build in a process took ~0.7 s here


def test_failing_warm_up_is_logged_and_the_worker_starts(tmp_path: Path) -> None:
    j = Journal(f"sqlite:///{tmp_path / 'j.sqlite'}")
    route = Route.model_validate({"name": "r", "model": "brightness", "destinations": ["pacs"]})
    w = Worker(j, {"brightness": BrokenWarmUp()}, [route], tmp_path / "results", lanes=("streaming",))
    with structlog.testing.capture_logs() as logs:
        w.start()
    try:
        assert [lane.name for lane in w.lanes()] == ["worker-streaming"]
        assert any(e["event"] == "model_warm_up_failed" and e["error_type"] == "RuntimeError" for e in logs)
        assert any(e["event"] == "worker_warmed_up" for e in logs)
    finally:
        w.stop(5.0)
