"""The bundled models' domain guards on real images that are not their domain, and on held-out phantoms.

Foreign images: the MR, CT, US and CR files of pydicom's test data and pydicom-data (vendor
images), and for the non-breast models the BUSI breast ultrasound images (read in place from
../shared/data/busi256, never copied into the repository). An image counts as not assessed when
the guard flags it or the model's own `prepare` refuses it (the job then fails with its reason and
no result is written); the guard alone must flag at least 95 % of the images `prepare` accepts.
In-domain: phantoms of a generator seed used neither for fitting nor for the threshold (9001):
at most 5 % flagged.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom import Dataset

from models.registry import ModelSpec, build_model
from train.common.guard import foreign_datasets, foreign_flagged, phantom_inputs
from train.phantoms.dicom_writer import Subject, UsRegion, us_image, with_file_meta

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes per model

REPO = Path(__file__).resolve().parents[2]
#: ../shared/data/busi256 of the main checkout (a worktree sits one folder deeper)
BUSI = next((p / "shared" / "data" / "busi256" for p in (REPO.parent, REPO.parent.parent)
             if (p / "shared" / "data" / "busi256").is_dir()), REPO.parent / "shared" / "data" / "busi256")
MODELS = ("lge_qa", "synovitis_sgs", "synovitis_dgs", "synovitis_spd", "synovitis_dpd", "gout_mtp1",
          "breast_elastography", "hand_joints")
HELD_OUT_SEED = 9001
N_HELD_OUT = {"synovitis_dgs": 20, "synovitis_dpd": 20, "hand_joints": 20, "breast_elastography": 20}


@functools.cache
def _model(model_id: str) -> Any:
    entry = yaml.safe_load((REPO / "conf" / "models.yaml").read_text())["models"][model_id]
    return build_model(ModelSpec(model_id, (REPO / "conf" / entry["weights"]).resolve(), entry["sha256"],
                                 {"torch_threads": 1}))


@functools.cache
def _foreign() -> tuple[Dataset, ...]:
    return tuple(foreign_datasets())


def _busi_dataset(path: Path, i: int) -> Dataset:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    rows, cols = grey.shape
    return with_file_meta(us_image(grey, regions=[UsRegion(0, 0, cols - 1, rows - 1, 0.01, 0.01)], doppler=False,
                                   subject=Subject(patient_id="PH-BUSI"), anatomy="BREAST", body_part="BREAST",
                                   series_description="BUSI", instance_number=i + 1))


@functools.cache
def _busi() -> tuple[Dataset, ...]:
    if not BUSI.is_dir():
        return ()
    files = sorted(BUSI.rglob("*.png"))
    files = [f for f in files if "_mask" not in f.name][::12][:40]
    return tuple(_busi_dataset(f, i) for i, f in enumerate(files))


@pytest.mark.parametrize("model_id", MODELS)
class TestDomainGuardRates:
    def test_guard_is_fitted_into_the_bundled_weights(self, model_id: str) -> None:
        guard = _model(model_id).guard
        assert guard is not None and guard.threshold > 0 and guard.calibration.get("n_fit", 0) >= 40

    def test_real_foreign_images_are_not_assessed(self, model_id: str) -> None:
        """>= 95 % of the vendor MR/CT/US/CR test images are flagged or refused; the guard flags
        >= 95 % of those `prepare` accepts."""
        model = _model(model_id)
        images = list(_foreign()) + (list(_busi()) if model_id != "breast_elastography" else [])
        flagged, refused, total = foreign_flagged(model.guard, model, images)
        assert total >= 57
        assert (flagged + refused) / total >= 0.95, (flagged, refused, total)
        if total - refused:
            assert flagged / (total - refused) >= 0.95, (flagged, refused, total)

    def test_held_out_in_domain_phantoms_pass(self, model_id: str) -> None:
        """<= 5 % of phantoms from a seed used neither to fit nor to threshold are flagged."""
        model = _model(model_id)
        datasets = phantom_inputs(model_id, HELD_OUT_SEED, N_HELD_OUT.get(model_id, 40))
        flagged = 0
        for ds in datasets:
            inputs, _ = model.guard_inputs(model.prepare([ds]))
            flagged += int(np.any(model.guard.scores(inputs) > model.guard.threshold))
        assert flagged / len(datasets) <= 0.05, (flagged, len(datasets))
