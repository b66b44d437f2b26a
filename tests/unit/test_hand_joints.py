"""The hand-joints model: image handling, geometry, phantoms, demo weights, SR references."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import pytest
import torch
from pydicom import Dataset
from pydicom.data import get_testdata_file

from models.base import ClinicalModel
from models.hand_joints import joints as J, transforms as T
from models.hand_joints.wrapper import HandJointsModel, build, scheme_for
from sidecar.results.sr import build_sr
from tests.helpers.validate import assert_valid_dicom
from train.common import metrics as M
from train.hand_joints.annotations import AnnotationError, read_annotated_manifest
from train.hand_joints.task import samples_of
from train.phantoms.hand import HandImage, demo_series, hand_image

DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "hand_joints" / "weights" / "demo.pt"
FRESH_SEEDS = range(900_000, 900_010)  # never drawn by demo-weights (its seeds are 0..239)


def _content_items(ds: Dataset) -> list[Dataset]:
    """Every SR content item below `ds`, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_content_items(item))
    return out


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def fuji_cr() -> Dataset:
    """A real Fuji CR of an extremity from pydicom-data: MONOCHROME1, VOI window 550/1024, Laterality R."""
    path = get_testdata_file("RG3_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG3_UNCR.dcm is not installed")
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def demo_model() -> HandJointsModel:
    return build(DEMO_WEIGHTS, {"torch_threads": 2})


class TestImageHandling:
    def test_real_monochrome1_cr_is_inverted_so_bone_is_bright(self, fuji_cr: Dataset) -> None:
        """The Fuji CR (MONOCHROME1) displays inverted: high stored values become dark."""
        shown = T.display_pixels(fuji_cr)
        stored = fuji_cr.pixel_array.astype(float)
        assert shown.dtype == np.float32 and shown.min() >= 0.0 and shown.max() <= 1.0
        assert np.corrcoef(shown[::8, ::8].ravel(), stored[::8, ::8].ravel())[0, 1] < -0.9

    def test_real_cr_voi_window_is_applied(self, fuji_cr: Dataset) -> None:
        """Grey levels follow the LINEAR 550/1024 window (PS3.3 C.11.2.1.2.1), then MONOCHROME1 inversion."""
        shown = T.display_pixels(fuji_cr).astype(np.float64)
        x = fuji_cr.pixel_array.astype(np.float64)
        c, w = 550.0, 1024.0
        expected = 1.0 - np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
        assert np.abs(shown - expected).max() < 2e-3

    def test_monochrome2_copy_of_the_real_cr_is_its_negative(self, fuji_cr: Dataset) -> None:
        """The same pixels labelled MONOCHROME2 display as the exact complement."""
        mono2 = copy.deepcopy(fuji_cr)
        mono2.PhotometricInterpretation = "MONOCHROME2"
        assert np.allclose(T.display_pixels(mono2), 1.0 - T.display_pixels(fuji_cr), atol=1e-6)

    def test_real_cr_laterality_comes_from_series_laterality(self, fuji_cr: Dataset) -> None:
        """The Fuji CR has no ImageLaterality; its series Laterality R is used."""
        assert "ImageLaterality" not in fuji_cr
        assert T.laterality_of(fuji_cr) == "R"

    @pytest.mark.parametrize(("description", "expected"), [
        ("HAND PA LEFT", "L"), ("Hand rechts pa", "R"), ("BOTH HANDS PA", "B"), ("Haende bds", "B"),
        ("L HAND", "L"), ("HAND PA", None)])
    def test_laterality_falls_back_to_the_description(self, description: str, expected: str | None) -> None:
        """Without laterality tags the series description decides (None when it does not say)."""
        ds = Dataset()
        ds.SeriesDescription = description
        assert T.laterality_of(ds) == expected

    def test_phantom_polarities_display_alike(self) -> None:
        """A MONOCHROME1 and a MONOCHROME2 phantom of the same seed look the same after handling."""
        a = T.display_pixels(hand_image(5, monochrome1=True).dataset)
        b = T.display_pixels(hand_image(5, monochrome1=False).dataset)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98

    def test_left_hand_is_mirrored_and_maps_back(self) -> None:
        """A left hand reaches the net mirrored; canonical points and boxes map back to the source."""
        img = hand_image(11, laterality="L", n_hands=1)
        (hand,) = T.hands_of(img.dataset)
        assert hand.mirrored and hand.laterality == "L"
        src = np.array([img.hands[0].keypoints[n] for n in J.JOINTS])
        canon = src.copy()
        canon[:, 0] = hand.pixels.shape[1] - 1 - canon[:, 0]
        assert np.allclose(hand.to_source(canon), src)
        # canonical thumb lies towards column 0 (a right hand): IP1 left of DIP5
        assert canon[J.JOINT_INDEX["IP1"], 0] < canon[J.JOINT_INDEX["DIP5"], 0]
        box = (10.0, 20.0, 30.0, 40.0)
        c0, r0, c1, r1 = hand.box_to_source(box)
        w = hand.pixels.shape[1]
        assert (c0, r0, c1, r1) == (w - 30.0, 20.0, w - 10.0, 40.0)

    def test_two_hand_image_is_split_between_the_hands(self) -> None:
        """An ImageLaterality B radiograph gives two hands, cut between their joints."""
        img = hand_image(21, n_hands=2)
        assert img.dataset.ImageLaterality == "B"
        right, left = T.hands_of(img.dataset)
        assert (right.laterality, left.laterality) == ("R", "L") and left.mirrored
        cut = left.col0
        assert max(p[0] for p in img.hands[0].keypoints.values()) < cut
        assert min(p[0] for p in img.hands[1].keypoints.values()) > cut

    def test_imager_pixel_spacing_sets_the_detector_grid(self) -> None:
        """At 0.3 mm pixels a 2 mm grid step is 6.67 source pixels; without spacing it fits the image."""
        assert T.grid_map((800, 560), 0.3).step == pytest.approx(2.0 / 0.3)
        assert T.grid_map((800, 560), None).step == pytest.approx(800 / T.GRID)

    @pytest.mark.parametrize(("text", "schemes"), [
        ("RHEUMATOID ARTHRITIS FOLLOW-UP", ("shs",)), ("HAND OSTEOARTHRITIS", ("kl",)),
        ("HAND PA", ("shs", "kl"))])
    def test_scheme_follows_the_clinical_indication(self, text: str, schemes: tuple[str, ...]) -> None:
        """RA indications get SHS narrowing, OA gets KL, unknown gets both."""
        ds = Dataset()
        ds.StudyDescription = text
        assert scheme_for(ds) == schemes


class TestGeometryAndPhantoms:
    def test_truth_boxes_hold_their_joint_and_lie_in_the_image(self) -> None:
        """Every truth box contains its keypoint and lies within the radiograph."""
        img = hand_image(3)
        ds = img.dataset
        for hand in img.hands:
            for name, (c0, r0, c1, r1) in hand.boxes.items():
                x, y = hand.keypoints[name]
                assert c0 < x + 0.5 < c1 and r0 < y + 0.5 < r1
                assert c0 >= 0 and r0 >= 0 and c1 <= ds.Columns and r1 <= ds.Rows

    def test_phantom_grades_cover_the_scheme_joints(self) -> None:
        """RA phantoms grade the 15 SHS joints, OA phantoms the 15 KL joints, 0-4."""
        ra = hand_image(4, disease="RA").hands[0]
        oa = hand_image(4, disease="OA").hands[0]
        assert set(ra.grades) == set(J.SCHEME_JOINTS[J.SHS]) and set(oa.grades) == set(J.SCHEME_JOINTS[J.KL])
        assert all(0 <= g <= 4 for g in [*ra.grades.values(), *oa.grades.values()])

    def test_phantoms_are_valid_dicom_with_their_polarity(self) -> None:
        """Phantom CR/DX objects pass dciodvfy and carry the photometric interpretation asked for."""
        cases: tuple[tuple[bool, Literal["CR", "DX"]], ...] = ((True, "CR"), (False, "DX"))
        for mono1, modality in cases:
            ds = hand_image(8, monochrome1=mono1, modality=modality).dataset
            back = assert_valid_dicom(ds)
            assert back.PhotometricInterpretation == ("MONOCHROME1" if mono1 else "MONOCHROME2")
            assert back.Modality == modality

    def test_phantoms_are_reproducible_from_their_seed(self) -> None:
        """The same seed gives the same pixels and truth."""
        a, b = hand_image(9), hand_image(9)
        assert np.array_equal(a.dataset.pixel_array, b.dataset.pixel_array)
        assert a.hands[0].boxes == b.hands[0].boxes

    def test_three_class_mapping_is_the_cards(self) -> None:
        """SHS 0 | 1-2 | 3-4 and KL 0-1 | 2 | 3-4 map to healthy | mild | severe."""
        assert J.THREE_CLASS[J.SHS] == (0, 1, 1, 2, 2) and J.THREE_CLASS[J.KL] == (0, 0, 1, 2, 2)
        p = J.three_class_probabilities(J.KL, [0.1, 0.2, 0.3, 0.25, 0.15])
        assert np.allclose(p, [0.3, 0.3, 0.4])


class TestDemoWeights:
    def test_demo_weights_are_small_and_loadable(self, demo_model: HandJointsModel) -> None:
        """The bundled weights stay under 15 MB and build a ClinicalModel marked not for clinical use."""
        assert DEMO_WEIGHTS.stat().st_size <= 15 * 1024 * 1024
        assert isinstance(demo_model, ClinicalModel)
        assert demo_model.card.not_for_clinical_use and demo_model.card.id == "hand_joints"
        card = (DEMO_WEIGHTS.parent.parent / "card.yaml").read_text()
        assert hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest() in card

    def test_detection_and_grading_on_fresh_phantoms(self, demo_model: HandJointsModel) -> None:
        """On unseen seeded phantoms: mAP@0.5 >= 0.5 and per-joint grades beat chance."""
        dets, gts = [], []
        y3, p3 = [], []
        for seed in FRESH_SEEDS:
            img = hand_image(seed)
            for h, (res, truth) in enumerate(zip(demo_model.analyse(img.dataset), img.hands, strict=True)):
                by_name = {j.name: j for j in res.joints}
                assert res.laterality == truth.laterality
                for name in J.JOINTS:
                    gts.append(M.Box(f"{seed}/{h}", name, *truth.boxes[name]))
                    dets.append(M.Box(f"{seed}/{h}", name, *by_name[name].box, score=by_name[name].confidence))
                for name, grade in truth.grades.items():
                    probs = by_name[name].p_shs if truth.scheme == J.SHS else by_name[name].p_kl
                    y3.append(J.THREE_CLASS[truth.scheme][grade])
                    p3.append(J.three_class_probabilities(truth.scheme, [float(v) for v in probs]))
        assert M.detection_ap(dets, gts, 0.5).mean_ap >= 0.5
        onehot = np.eye(3)[np.array(y3)]
        pr_auc_all = M.average_precision(onehot.ravel(), np.array(p3).ravel())
        assert pr_auc_all > 1 / 3 + 0.1  # chance for a micro-averaged 3-class PR-AUC is 1/3

    def test_findings_carry_one_graded_detection_per_scored_joint(self, demo_model: HandJointsModel) -> None:
        """An RA left hand: SHS joints only, side L, boxes in the image, per-hand totals."""
        (ds,) = demo_series(0)
        findings = demo_model.predict(demo_model.prepare([ds]))
        labels = [d.label for d in findings.detections]
        assert set(labels) <= set(J.SCHEME_JOINTS[J.SHS]) and len(labels) == len(set(labels)) >= 12
        for d in findings.detections:
            assert d.laterality == "L" and d.grade is not None and d.grade.label.startswith("SHS JSN")
            c0, r0, c1, r1 = d.box
            assert 0 <= c0 < c1 <= ds.Columns and 0 <= r0 < r1 <= ds.Rows
        names = {m.name for m in findings.measurements}
        assert "left hand SHS narrowing total" in names and "left hand joints SHS JSN severe" in names

    def test_sr_scoords_land_inside_the_image_and_reference_it(self, demo_model: HandJointsModel) -> None:
        """Every SCOORD of the SR lies on the radiograph and its SELECTED FROM names the image."""
        (ds,) = demo_series(0)
        findings = demo_model.predict(demo_model.prepare([ds]))
        sr = build_sr(findings, [ds], demo_model.card, input_uid=str(ds.SeriesInstanceUID), kind="series")
        back = assert_valid_dicom(sr)
        scoords = [item for item in _content_items(back) if item.get("ValueType") == "SCOORD"]
        # one planar ROI per joint, plus the image's own ROI (every SR group carries a region)
        assert len(scoords) == len(findings.detections) + 1
        for item in scoords:
            pts = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
            assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= ds.Columns).all()
            assert (pts[:, 1] >= 0).all() and (pts[:, 1] <= ds.Rows).all()
            ref = item.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID

    def test_unknown_side_is_inferred_from_the_image(self, demo_model: HandJointsModel) -> None:
        """With laterality stripped from the headers, a left hand is still reported as left."""
        img = hand_image(900_100, laterality="L", n_hands=1)
        ds = img.dataset
        del ds.ImageLaterality
        ds.SeriesDescription = "HAND PA"
        (res,) = demo_model.analyse(ds)
        assert res.side_inferred and res.laterality == "L"


# --- a site's annotated radiographs: manifest + joints CSV ------------------------------------


def _write_site(root: Path) -> tuple[Path, list[HandImage]]:
    """Eight phantom radiographs as a site would hand them over: DICOM files, a manifest with
    splits and `<stem>.joints.csv` with the truth written out in the documented format."""
    root.mkdir(parents=True, exist_ok=True)
    specs: list[dict[str, Any]] = [
        {"disease": "RA", "n_hands": 1, "laterality": "L"}, {"disease": "OA", "n_hands": 1, "laterality": "R"},
        {"disease": "RA", "n_hands": 2}, {"disease": "OA", "n_hands": 1, "laterality": "L"},
        {"disease": "OA", "n_hands": 1, "laterality": "R"}, {"disease": "RA", "n_hands": 1, "laterality": "L"},
        {"disease": "RA", "n_hands": 1, "laterality": "R"}, {"disease": "OA", "n_hands": 2},
    ]
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    images = [hand_image(700_000 + i, **spec) for i, spec in enumerate(specs)]
    del images[3].dataset.ImageLaterality  # side from the annotation, as a header-less CR would
    images[3].dataset.SeriesDescription = "HAND PA"
    manifest = root / "site.csv"
    joints = root / "site.joints.csv"
    with manifest.open("w", newline="") as mf, joints.open("w", newline="") as jf:
        m = csv.writer(mf)
        m.writerow(["path", "patient_id", "sop_instance_uid", "split"])
        j = csv.writer(jf)
        j.writerow(["sop_instance_uid", "path", "joint", "laterality", "x", "y", "x0", "y0", "x1", "y1",
                    "shs_jsn", "kl"])
        for i, (img, split) in enumerate(zip(images, splits, strict=True)):
            name = f"img{i}.dcm"
            img.dataset.save_as(root / name, enforce_file_format=True)
            uid = str(img.dataset.SOPInstanceUID)
            m.writerow([name, img.patient_id, uid, split])
            for hand in img.hands:
                for joint in J.JOINTS:
                    x, y = hand.keypoints[joint]
                    box = hand.boxes[joint] if i % 2 == 0 else ("", "", "", "")  # odd: the model's box rule
                    grade = hand.grades.get(joint, "")
                    key = (uid, "") if i != 1 else ("", name)  # image 1 keyed by path
                    j.writerow([*key, joint, hand.laterality, x, y, *box,
                                grade if hand.scheme == J.SHS else "", grade if hand.scheme == J.KL else ""])
    return manifest, images


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[HandImage]]:
    return _write_site(tmp_path_factory.mktemp("site"))


class TestSiteAnnotations:
    def test_joints_csv_is_read_with_sides_grades_and_default_boxes(
            self, site: tuple[Path, list[HandImage]]) -> None:
        """Every manifest row gets its hands, keypoints, grades per scheme and boxes (given or derived)."""
        manifest, images = site
        annotated, unannotated = read_annotated_manifest(manifest)
        assert unannotated == 0 and len(annotated) == len(images)
        for got, img in zip(annotated, images, strict=True):
            assert [h.laterality for h in got.hands] == [h.laterality for h in img.hands]
            for a, truth in zip(got.hands, img.hands, strict=True):
                assert dict(a.shs if truth.scheme == J.SHS else a.kl) == truth.grades
                for joint in J.JOINTS:
                    assert np.allclose(a.keypoints[joint], truth.keypoints[joint])
                    assert np.allclose(a.boxes[joint], truth.boxes[joint], atol=1e-6)

    def test_keypoints_map_into_the_canonical_hand_as_in_service(self, site: tuple[Path, list[HandImage]]) -> None:
        """Training samples come from the serving transforms; their canonical keypoints map back exactly."""
        manifest, images = site
        annotated, _ = read_annotated_manifest(manifest)
        samples = samples_of(annotated)
        assert len(samples) == sum(len(img.hands) for img in images)
        for s in samples:
            truth = {str(h.laterality): h for h in images[s.image].hands}[s.hand.laterality or ""]
            src = np.array([truth.keypoints[n] for n in J.JOINTS])
            assert np.allclose(s.hand.to_source(s.points), src)
            assert s.hand.mirrored == (s.hand.laterality == "L")

    def test_fit_and_evaluate_on_a_manifest_write_a_finite_report(
            self, site: tuple[Path, list[HandImage]], tmp_path: Path) -> None:
        """`fit --manifest` trains both networks from the site's splits; `evaluate --manifest` reports the test split."""
        from train.cli import main

        manifest, _ = site
        fit_dir, report = tmp_path / "fit", tmp_path / "evaluate"
        assert main(["hand_joints", "fit", "--manifest", str(manifest), "--epochs", "1", "--out", str(fit_dir),
                     "--no-progress", "--device", "cpu"]) == 0
        bundle = fit_dir / "bundle.pt"
        assert build(bundle, {}).metadata["manifest"] == "site.csv"
        assert main(["hand_joints", "evaluate", "--manifest", str(manifest), "--split", "test",
                     "--checkpoint", str(bundle), "--out", str(report)]) == 0
        metrics = json.loads((report / "metrics.json").read_text())
        assert (report / "report.md").is_file() and metrics["n_cases"] == 2
        summary = metrics["summary"]
        for key in ("detection.map50", "detection.recall_mean", "ra.pr_auc.all", "oa.pr_auc.all"):
            assert math.isfinite(summary[key]["value"]), key
        for tag in ("ra", "oa"):
            assert {f"{tag}.pr_auc.{c}" for c in J.THREE_CLASSES} <= set(summary)
        recall = metrics["details"]["recall_per_joint"]
        assert set(recall) == set(J.JOINTS) and all(0.0 <= v <= 1.0 for v in recall.values())
        assert metrics["details"]["hands_unmatched"] == 0  # the test images carry their side
        assert "test split of site.csv" in (report / "report.md").read_text()

    def test_unknown_joint_names_its_row(self, site: tuple[Path, list[HandImage]], tmp_path: Path) -> None:
        """A joints row naming a joint the model does not know is refused with its file and line."""
        manifest, _ = site
        bad = tmp_path / "bad.csv"
        bad.write_text("\n".join(
            f"{manifest.parent / line.split(',', 1)[0]},{line.split(',', 1)[1]}" if i else line
            for i, line in enumerate(manifest.read_text().splitlines())) + "\n")
        rows = (manifest.parent / "site.joints.csv").read_text().splitlines()
        rows[3] = rows[3].replace(",DIP4,", ",DIP1,")
        (tmp_path / "bad.joints.csv").write_text("\n".join(rows) + "\n")
        with pytest.raises(AnnotationError, match=r"bad\.joints\.csv:4: joint 'DIP1' is not a joint"):
            read_annotated_manifest(bad)

    def test_annotated_side_must_agree_with_the_header(self, site: tuple[Path, list[HandImage]]) -> None:
        """A hand annotated L on a radiograph whose header says R is refused, naming the image."""
        manifest, _ = site
        annotated, _ = read_annotated_manifest(manifest)
        right = annotated[1]  # header ImageLaterality R
        swapped = replace(right, hands=tuple(replace(h, laterality="L") for h in right.hands))
        with pytest.raises(AnnotationError, match=r"site\.csv:3: joints annotated on side\(s\) L but the image "
                                                  r"header says laterality R"):
            samples_of([swapped])
