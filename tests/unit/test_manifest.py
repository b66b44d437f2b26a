"""Manifest format, build_manifest from a DICOM folder, and ManifestDataset."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd

from train.common.data import (
    ManifestDataset,
    balanced_sampler,
    class_index_target,
    class_weights,
)
from train.common.manifest import Manifest, ManifestError, ManifestRow, build_manifest
from train.phantoms import dicom_writer as dw


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _study(folder: Path) -> list[dict[str, str]]:
    """Two fake patients, one series each of two US images, in per-series folders."""
    written = []
    for p in range(2):
        subject = dw.Subject(patient_id=f"PH-{p:04d}", patient_name="PHANTOM^MANIFEST",
                             study_uid=dw.phantom_uid("study", str(p)),
                             accession_number=f"PHACC{p:04d}")
        series_uid = dw.phantom_uid("series", str(p))
        for i in range(2):
            uid = dw.phantom_uid("sop", str(p), str(i))
            ds = dw.us_image(np.full((16, 16), 10 * (p + 1), np.uint8),
                             regions=[dw.UsRegion(0, 0, 15, 15, 0.02, 0.02)], subject=subject,
                             series_uid=series_uid, sop_instance_uid=uid, instance_number=i + 1)
            dw.write(ds, folder / f"series{p}" / f"{i}.dcm")
            written.append({"patient": f"PH-{p:04d}", "series": series_uid, "sop": uid,
                            "accession": f"PHACC{p:04d}"})
    (folder / "notes.txt").write_text("not DICOM")
    return written


class TestBuildManifest:
    def test_per_instance_rows_take_patient_and_uids_from_headers(self, tmp_path: Path) -> None:
        """Keyed by SOP Instance UID, each labelled file is a row with its DICOM identifiers."""
        files = _study(tmp_path / "dicom")
        labels = _write_csv(tmp_path / "labels.csv", ["sop_instance_uid", "label", "reader1_vas"],
                            [[f["sop"], "disc", "3.5"] for f in files[:3]])
        manifest = build_manifest(tmp_path / "dicom", labels, key="sop_instance_uid",
                                  out_csv=tmp_path / "out" / "manifest.csv")
        assert len(manifest) == 3
        assert {r.sop_instance_uid for r in manifest} == {f["sop"] for f in files[:3]}
        assert {r.patient_id for r in manifest} == {"PH-0000", "PH-0001"}
        assert all(r.reader_scores["reader1_vas"] == 3.5 for r in manifest)
        reread = Manifest.read(tmp_path / "out" / "manifest.csv")
        assert reread.rows == manifest.rows
        assert all(reread.resolve(r).is_file() for r in reread)

    def test_series_key_gives_one_row_per_series_pointing_at_its_folder(self, tmp_path: Path) -> None:
        """Keyed by Series UID, the row names the series folder and no single instance."""
        files = _study(tmp_path / "dicom")
        series = sorted({f["series"] for f in files})
        labels = _write_csv(tmp_path / "labels.csv", ["series_uid", "label"],
                            [[s, "positive"] for s in series])
        manifest = build_manifest(tmp_path / "dicom", labels, key="series_uid",
                                  out_csv=tmp_path / "manifest.csv")
        assert len(manifest) == 2
        for row in manifest:
            assert manifest.resolve(row).is_dir()
            assert row.series_uid in series and row.sop_instance_uid == ""

    def test_accession_key_groups_a_study(self, tmp_path: Path) -> None:
        """Keyed by accession number, one row per study carries the study UID."""
        _study(tmp_path / "dicom")
        labels = _write_csv(tmp_path / "labels.csv", ["accession", "label", "site"],
                            [["PHACC0000", "a", "site-A"], ["PHACC0001", "b", "site-B"]])
        manifest = build_manifest(tmp_path / "dicom", labels, key="accession",
                                  out_csv=tmp_path / "manifest.csv")
        assert [r.site for r in manifest] == ["site-A", "site-B"]
        assert all(r.study_uid for r in manifest)

    def test_png_rows_take_patient_id_from_the_label_csv(self, tmp_path: Path) -> None:
        """PNG files are matched by relative path and need a patient_id column."""
        import matplotlib.image

        (tmp_path / "png").mkdir()
        matplotlib.image.imsave(tmp_path / "png" / "a.png", np.zeros((8, 8)), cmap="gray")
        labels = _write_csv(tmp_path / "labels.csv", ["path", "patient_id", "label"],
                            [["a.png", "PH-0009", "1"]])
        manifest = build_manifest(tmp_path / "png", labels, key="path",
                                  out_csv=tmp_path / "manifest.csv")
        assert manifest[0].patient_id == "PH-0009"
        assert manifest.resolve(manifest[0]) == (tmp_path / "png" / "a.png").resolve()

    def test_strict_mode_rejects_labels_without_images(self, tmp_path: Path) -> None:
        """With strict, a label row that matches no file is an error that names the key."""
        _study(tmp_path / "dicom")
        labels = _write_csv(tmp_path / "labels.csv", ["sop_instance_uid", "label"],
                            [["1.2.3.4", "x"]])
        with pytest.raises(ManifestError, match=r"1\.2\.3\.4"):
            build_manifest(tmp_path / "dicom", labels, out_csv=tmp_path / "m.csv", strict=True)


class TestManifestFormat:
    def test_round_trip_keeps_labels_readers_and_missing_scores(self, tmp_path: Path) -> None:
        """Writing then reading gives the same rows, NaN for a missing reader score."""
        rows = (
            ManifestRow("a.dcm", "PH-1", label="2", labels={"synovitis": "1"},
                        reader_scores={"reader1_vas": 4.0, "reader2_vas": math.nan}, split="train"),
            ManifestRow("b.dcm", "PH-2", label="0", labels={"synovitis": "0"},
                        reader_scores={"reader1_vas": 1.0, "reader2_vas": 2.0}, view="4CH"),
        )
        path = Manifest(rows).write(tmp_path / "m.csv")
        back = Manifest.read(path)
        assert back.reader_columns == ("reader1_vas", "reader2_vas")
        assert back[1] == rows[1]
        assert math.isnan(back[0].reader_scores["reader2_vas"])
        assert back[0].labels == {"synovitis": "1"}
        assert back.split("train").patient_ids() == ["PH-1"]

    @pytest.mark.parametrize(
        ("header", "row", "message"),
        [
            (["path", "patient_id", "series_uid"], ["a", "PH-1", "1.02.3"], r":2: column 'series_uid'"),
            (["path", "patient_id", "reader1_vas"], ["a", "PH-1", "high"], r":2: column 'reader1_vas'"),
            (["path", "patient_id", "colour"], ["a", "PH-1", "red"], r":1: unknown column 'colour'"),
            (["path", "label"], ["a", "1"], r":1: required column 'patient_id'"),
            (["path", "patient_id"], ["a", ""], r":2: column 'patient_id': empty"),
            (["path", "patient_id", "split"], ["a", "PH-1", "Train Set"], r":2: column 'split'"),
        ],
    )
    def test_invalid_cells_name_line_and_column(self, tmp_path: Path, header: list[str],
                                                row: list[str], message: str) -> None:
        """Every validation error names the file, the line and the column."""
        path = _write_csv(tmp_path / "m.csv", header, [row])
        with pytest.raises(ManifestError, match=message):
            Manifest.read(path)

    def test_rows_are_frozen(self) -> None:
        """A row cannot be changed after it is made, nor its label mapping."""
        row = ManifestRow("a", "PH-1", labels={"x": "1"})
        with pytest.raises(AttributeError):
            setattr(row, "label", "2")  # by name: mypy would (rightly) refuse the assignment
        with pytest.raises(TypeError):
            cast(dict[str, str], row.labels)["x"] = "2"  # typed read-only; must be read-only at run time too


class TestManifestDataset:
    def test_items_are_tensors_from_the_models_load_function(self, tmp_path: Path) -> None:
        """The dataset calls the given load, maps labels to indices and applies augmentation."""
        rows = tuple(ManifestRow(f"{i}.dcm", f"PH-{i}", label="disc" if i % 2 else "ring")
                     for i in range(4))
        manifest = Manifest(rows, tmp_path)
        load_calls: list[str] = []

        def load(row: ManifestRow) -> np.ndarray:
            load_calls.append(row.path)
            return np.full((1, 4, 4), float(row.path[0]), np.float32)

        dataset = ManifestDataset(manifest, load, target=class_index_target(("ring", "disc")),
                                  augment=[RandFlipd(keys="image", prob=1.0, spatial_axis=0)],
                                  cache=True)
        item = dataset[3]
        assert item["image"].shape == (1, 4, 4) and item["image"].dtype == torch.float32
        assert float(item["image"][0, 0, 0]) == 3.0
        assert int(item["label"]) == 1 and int(item["index"]) == 3
        assert len(load_calls) == 4  # cached once; reading again does not reload
        dataset[3]
        assert len(load_calls) == 4

    def test_unknown_label_is_a_clear_error(self) -> None:
        """A label outside the class list names the row and the classes."""
        target = class_index_target(("ring", "disc"))
        with pytest.raises(ManifestError, match="'square'"):
            target(ManifestRow("x.dcm", "PH-1", label="square"))

    def test_class_weights_and_balanced_sampler(self) -> None:
        """Inverse-frequency weights; the seeded sampler draws both classes about equally."""
        labels = np.array([0] * 90 + [1] * 10)
        weights = class_weights(labels, 2)
        assert torch.allclose(weights, torch.tensor([100 / 180, 100 / 20]))
        drawn = labels[list(balanced_sampler(labels, 2, seed=0, num_samples=2000))]
        assert 0.4 < drawn.mean() < 0.6
        again = labels[list(balanced_sampler(labels, 2, seed=0, num_samples=2000))]
        assert np.array_equal(drawn, again)
