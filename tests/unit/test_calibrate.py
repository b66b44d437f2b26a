"""Site operating points and temperature scaling (train/common/calibrate.py), through the served model."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.gout_mtp1.wrapper import build as build_gout
from train.common.calibrate import (
    CalibrateRequest,
    Target,
    apply_temperature,
    choose_threshold,
    fit_temperature,
    operating_point,
    run_calibrate,
)
from train.phantoms.dicom_writer import write
from train.phantoms.mtp1 import case_dataset, sample_cases

REPO = Path(__file__).resolve().parents[2]


def _scores(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = (g.random(n) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(g.normal(0, 1, n) + 2.0 * (2 * y - 1))))
    return y, p


class TestTargets:
    def test_parse_names_what_is_expected(self) -> None:
        assert str(Target.parse("sensitivity=0.9")) == "sensitivity=0.9"
        assert Target.parse("youden").value is None
        with pytest.raises(ValueError, match="expected one of"):
            Target.parse("accuracy=0.9")
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            Target.parse("specificity=1.5")

    @pytest.mark.parametrize(("target", "check"), [
        ("sensitivity=0.9", lambda y, p, t: np.mean(p[y == 1] >= t) >= 0.9),
        ("specificity=0.95", lambda y, p, t: np.mean(p[y == 0] < t) >= 0.95),
        ("alert_rate=0.2", lambda y, p, t: np.mean(p >= t) <= 0.2),
    ])
    def test_threshold_meets_its_target(self, target: str, check) -> None:
        y, p = _scores()
        assert check(y, p, choose_threshold(y, p, Target.parse(target)))

    def test_sensitivity_target_takes_the_highest_such_threshold(self) -> None:
        """Of the thresholds meeting the sensitivity, the one with the fewest alerts."""
        y, p = _scores()
        t = choose_threshold(y, p, Target.parse("sensitivity=0.9"))
        higher = np.min(p[p > t])
        assert np.mean(p[y == 1] >= higher) < 0.9


class TestTemperature:
    def test_recovers_an_overconfident_network(self) -> None:
        """Probabilities made 3x overconfident are scaled back (T near 3) and score a lower log loss."""
        g = np.random.default_rng(1)
        z = g.normal(0, 2, 4000)
        y = (g.random(4000) < 1 / (1 + np.exp(-z))).astype(int)  # sigmoid(z) is calibrated by construction
        over = 1 / (1 + np.exp(-3 * z))
        t = fit_temperature(over, y)
        assert 2.0 < t < 4.5
        assert np.allclose(apply_temperature(over, t) >= 0.5, over >= 0.5)  # ranks and the 0.5 side kept

    def test_operating_point_carries_cis_around_its_figures(self) -> None:
        y, p = _scores(2)
        op = operating_point(y, p, Target.parse("youden"), n_boot=200)
        for name in ("threshold", "sensitivity", "specificity", "alert_rate"):
            lo, hi = op[f"{name}_ci"]
            assert lo <= op[name] <= hi, name

    def test_one_class_only_is_refused(self) -> None:
        with pytest.raises(ValueError, match="both"):
            operating_point(np.ones(10), np.linspace(0, 1, 10), Target.parse("youden"))


class TestCalibrateGout:
    def test_calibrate_writes_what_serving_uses(self, tmp_path: Path) -> None:
        """calibrate on a phantom manifest stores threshold and temperature; the built model uses them."""
        rows = []
        for i, case in enumerate(sample_cases(16, seed=4242)):
            path = write(case_dataset(case), tmp_path / "dicom" / f"{i}.dcm")
            rows.append({"path": str(path), "patient_id": case.patient_id,
                         "label": "abnormal" if case.abnormal else "normal", "split": "val"})
        manifest = tmp_path / "manifest.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "patient_id", "label", "split"])
            w.writeheader()
            w.writerows(rows)
        ck = tmp_path / "gout.pt"
        shutil.copy(REPO / "models" / "gout_mtp1" / "weights" / "demo.pt", ck)
        yaml_file = tmp_path / "models.yaml"
        yaml_file.write_text("models:\n  gout_mtp1:\n    weights: gout.pt\n    sha256: old\n")
        op = run_calibrate(CalibrateRequest("gout_mtp1", ck, manifest, Target.parse("sensitivity=0.9"),
                                            tmp_path / "report", models_yaml=yaml_file, n_boot=100))
        meta = torch.load(ck, weights_only=True)["metadata"]
        assert meta["threshold"] == op["threshold"] and meta["temperature"] == pytest.approx(op["temperature"], abs=1e-4)
        assert op["sensitivity"] >= 0.9 and op["n"] == len(rows)
        model = build_gout(ck)
        assert model.threshold == op["threshold"] and model.temperature == pytest.approx(op["temperature"], abs=1e-4)
        assert (tmp_path / "report" / "calibration.png").is_file()
        assert "sha256: old" not in yaml_file.read_text()
