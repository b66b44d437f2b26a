"""Every bundled model card carries its domain-guard and operating-point figures, and the tools
that write them (calibrate's phantom manifest, the argmax rule section) do what the cards say."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
import pytest
import torch
import yaml

from train.common.calibrate import ARGMAX_RULES, POSITIVE, rule_operating_point, write_rule_card
from train.common.guard import CARD_DIRS
from train.common.phantom_manifest import write_phantom_manifest

REPO = Path(__file__).resolve().parents[2]
MODELS_YAML = yaml.safe_load((REPO / "conf" / "models.yaml").read_text())["models"]


@pytest.mark.parametrize("model_id", sorted(CARD_DIRS))
class TestBundledCards:
    def test_card_has_domain_guard_and_operating_point_sections(self, model_id: str) -> None:
        card_dir = REPO / CARD_DIRS[model_id]
        md = (card_dir / "card.md").read_text()
        card = yaml.safe_load((card_dir / "card.yaml").read_text())
        for marker in ("domain-guard", "operating-point"):
            assert md.count(f"<!-- {marker}:begin -->") == 1 and md.count(f"<!-- {marker}:end -->") == 1, marker
        assert card["domain_guard"]["threshold"] > 0 and card["domain_guard"]["n_fit"] >= 40
        op = card["operating_point"]
        if model_id in POSITIVE:  # a site threshold, chosen by calibrate with CIs
            assert 0.0 < op["threshold"] < 1.0 and op["threshold_ci"][0] <= op["threshold"] <= op["threshold_ci"][1]
            assert op["sensitivity_ci"][0] <= op["sensitivity"] <= op["sensitivity_ci"][1]
            assert op["n"] >= 100 and 0 < op["n_positive"] < op["n"]
        else:  # the argmax rule and the card's figures at it
            assert op["threshold"] is None and op["rule"] == ARGMAX_RULES[model_id][0]
            assert set(op["figures"]) == set(ARGMAX_RULES[model_id][1])

    def test_card_names_the_weights_models_yaml_serves(self, model_id: str) -> None:
        card = yaml.safe_load((REPO / CARD_DIRS[model_id] / "card.yaml").read_text())
        assert card["weights_sha256"] == MODELS_YAML[model_id]["sha256"]

    def test_binary_checkpoint_serves_the_cards_threshold(self, model_id: str) -> None:
        if model_id not in POSITIVE:
            assert model_id in ARGMAX_RULES  # every model is one or the other
            return
        card = yaml.safe_load((REPO / CARD_DIRS[model_id] / "card.yaml").read_text())
        weights = (REPO / "conf" / MODELS_YAML[model_id]["weights"]).resolve()
        meta = torch.load(weights, map_location="cpu", weights_only=True)["metadata"]
        assert meta["threshold"] == card["operating_point"]["threshold"]
        assert meta["temperature"] == pytest.approx(card["operating_point"]["temperature"], abs=1e-4)


class TestRuleSection:
    def test_rule_section_is_replaced_not_duplicated(self, tmp_path: Path) -> None:
        src = REPO / CARD_DIRS["synovitis_spd"]
        for name in ("card.md", "card.yaml"):
            shutil.copy(src / name, tmp_path / name)
        write_rule_card(tmp_path, "synovitis_spd")
        write_rule_card(tmp_path, "synovitis_spd")
        md = (tmp_path / "card.md").read_text()
        assert md.count("<!-- operating-point:begin -->") == 1 and md.count("## Operating point") == 1
        assert "Sensitivity, grade_2" in md

    def test_binary_model_is_sent_to_calibrate(self) -> None:
        with pytest.raises(ValueError, match="calibrate"):
            rule_operating_point("lge_qa", {"metrics": {}})

    def test_card_without_the_figures_is_refused(self) -> None:
        with pytest.raises(ValueError, match="lacks the figures"):
            rule_operating_point("hand_joints", {"metrics": {"ra.grade_accuracy": {"value": 0.5}}})


class TestPhantomManifest:
    @pytest.mark.parametrize("model_id", sorted(POSITIVE))
    def test_writes_labelled_files_calibrate_reads(self, model_id: str, tmp_path: Path) -> None:
        manifest = write_phantom_manifest(model_id, tmp_path, seed=7300, n_patients=2)
        rows = list(csv.DictReader(manifest.open()))
        assert rows and {r["split"] for r in rows} == {"val"}
        assert manifest.name == f"phantoms-{model_id}-seed7300.csv"
        labels = {r["label"] for r in rows}
        assert labels <= {POSITIVE[model_id], "high_certainty", "normal"}
        ds = pydicom.dcmread(tmp_path / rows[0]["path"])
        assert ds.PatientID == rows[0]["patient_id"]

    def test_unknown_model_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no labelled phantoms"):
            write_phantom_manifest("hand_joints", tmp_path, seed=1, n_patients=1)


class TestCommands:
    def test_phantom_manifest_command_writes_the_manifest(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from train.cli import main

        assert main(["gout_mtp1", "phantom-manifest", "--out", str(tmp_path), "--patients", "1"]) == 0
        rows = list(csv.DictReader((tmp_path / "phantoms-gout_mtp1-seed7300.csv").open()))
        assert rows and f"{len(rows)} labelled phantom files" in capsys.readouterr().out

    def test_operating_point_command_refuses_a_binary_model(self, capsys: pytest.CaptureFixture[str]) -> None:
        from train.cli import main

        assert main(["lge_qa", "operating-point"]) != 0
        assert "calibrate" in capsys.readouterr().err
