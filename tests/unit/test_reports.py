"""Evaluation reports and model cards: the files exist and every number agrees with metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from train.common import metrics as M
from train.common.cards import NOT_FOR_CLINICAL_USE, write_model_card
from train.common.reports import Report, write_detection_report, write_generation_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW = re.compile(r"^\| (?P<label>[^|]+) \| `(?P<key>[^`]+)` \| (?P<ours>[^|]+) \| (?P<ci>[^|]+) \| (?P<pub>[^|]+) \|$")


def _binary_data(seed: int = 0, n: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1.0 / (1.0 + np.exp(-(1.6 * y - 0.8 + rng.normal(size=n))))
    readers = np.c_[p + rng.normal(0, 0.2, n), p + rng.normal(0, 0.4, n)]
    return y, p, readers


def _ordinal_data(seed: int = 0, n: int = 160, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.6
    return y, p / p.sum(axis=1, keepdims=True)


def _strict_json(path: Path) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}")

    return dict(json.loads(path.read_text(), parse_constant=refuse))


def _md_rows(text: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows.setdefault(m["key"], {k: v.strip() for k, v in m.groupdict().items()})
    return rows


def _f3(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _assert_md_matches_json(report: Report) -> None:
    data = _strict_json(report.out_dir / "metrics.json")
    rows = _md_rows((report.out_dir / "report.md").read_text())
    assert data["summary"], "no metrics"
    for key, r in data["summary"].items():
        assert key in rows, key
        assert rows[key]["ours"].split(" ± ")[0] == _f3(r["value"]), key
        if r.get("ci_low") is not None:
            assert rows[key]["ci"] == f"{_f3(r['ci_low'])}–{_f3(r['ci_high'])}", key


def _assert_pngs(report: Report, names: set[str]) -> None:
    pngs = {p.name for p in report.files if p.suffix == ".png"}
    assert names <= pngs
    for name in pngs:
        data = (report.out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name


class TestBinaryReport:
    @pytest.fixture(scope="class")
    @classmethod
    def report(cls, tmp_path_factory: pytest.TempPathFactory) -> Report:
        y, p, readers = _binary_data()
        return write_report(
            tmp_path_factory.mktemp("binary"), task="binary", y_true=y, y_score=p, class_names=["clear", "lesion"],
            threshold=0.5, published={"auc": 0.91, "sensitivity": (0.85, 0.78, 0.9), "youden.specificity": "0.88"},
            readers=readers, reader_names=["r1", "r2"], extra={"dataset": "toy phantoms"}, n_boot=200, seed=0,
        )

    def test_writes_json_markdown_and_nonempty_plots(self, report: Report) -> None:
        """metrics.json, report.md and the ROC, PR, calibration and confusion PNGs exist."""
        assert (report.out_dir / "metrics.json").is_file() and (report.out_dir / "report.md").is_file()
        _assert_pngs(report, {"roc.png", "pr.png", "calibration.png", "confusion.png"})

    def test_markdown_numbers_equal_the_json(self, report: Report) -> None:
        """Every summary value and CI in report.md is the JSON value to three decimals."""
        _assert_md_matches_json(report)

    def test_metrics_are_the_library_values(self, report: Report) -> None:
        """The report's AUC, its DeLong CI and the sensitivity are the metrics module's."""
        y, p, _ = _binary_data()
        s = report.summary
        auc = M.roc_auc_delong(y, p)
        assert s["auc"]["value"] == pytest.approx(auc.auc)
        assert (s["auc"]["ci_low"], s["auc"]["ci_high"]) == pytest.approx((auc.ci_low, auc.ci_high))
        assert s["pr_auc"]["value"] == pytest.approx(M.average_precision(y, p))
        tm = M.threshold_metrics(y, p, 0.5, n_boot=200, seed=0)
        assert s["sensitivity"]["value"] == pytest.approx(tm.metrics["sensitivity"].value)
        assert s["sensitivity"]["ci_low"] == pytest.approx(tm.metrics["sensitivity"].ci_low)
        assert s["youden.threshold"]["value"] == pytest.approx(M.youden_threshold(y, p))

    def test_published_figures_sit_beside_ours(self, report: Report) -> None:
        """Published numbers, triples and text appear in the Published column of their row."""
        rows = _md_rows((report.out_dir / "report.md").read_text())
        assert rows["auc"]["pub"] == "0.910"
        assert rows["sensitivity"]["pub"] == "0.850 (0.780–0.900)"
        assert rows["youden.specificity"]["pub"] == "0.88"
        assert report.metrics["published"]["auc"]["value"] == 0.91

    def test_readers_are_compared_with_the_model(self, report: Report) -> None:
        """Each reader gets an AUC and a DeLong test against the model; readers get an ICC."""
        y, p, readers = _binary_data()
        d = report.metrics["details"]["readers"]["r1"]["delong_vs_model"]
        t = M.delong_test(y, p, readers[:, 0])
        assert d["z"] == pytest.approx(t.z) and d["p"] == pytest.approx(t.p)
        assert report.summary["readers.icc2_1"]["value"] == pytest.approx(M.icc(readers).icc2_1.value)

    def test_confusion_matrix_in_json_and_markdown(self, report: Report) -> None:
        """The confusion matrix at the threshold is in both files."""
        y, p, _ = _binary_data()
        cm = M.confusion_matrix(y, (p >= 0.5).astype(int), [0, 1])
        assert report.metrics["details"]["confusion_matrix"]["matrix"] == cm.tolist()
        md = (report.out_dir / "report.md").read_text()
        assert f"| **clear** | {cm[0, 0]} | {cm[0, 1]} |" in md

    def test_same_seed_same_report(self, report: Report, tmp_path: Path) -> None:
        """A rerun with the same seed writes the same metrics.json."""
        y, p, readers = _binary_data()
        again = write_report(
            tmp_path, task="binary", y_true=y, y_score=p, class_names=["clear", "lesion"], threshold=0.5,
            published={"auc": 0.91, "sensitivity": (0.85, 0.78, 0.9), "youden.specificity": "0.88"},
            readers=readers, reader_names=["r1", "r2"], extra={"dataset": "toy phantoms"}, n_boot=200, seed=0,
        )
        assert again.metrics["summary"] == report.metrics["summary"]


class TestOrdinalReport:
    @pytest.fixture(scope="class")
    @classmethod
    def report(cls, tmp_path_factory: pytest.TempPathFactory) -> Report:
        y, p = _ordinal_data()
        rng = np.random.default_rng(1)
        readers = np.c_[np.clip(y + rng.integers(-1, 2, y.size), 0, 3), y]
        return write_report(
            tmp_path_factory.mktemp("ordinal"), task="ordinal", y_true=y, probabilities=p,
            class_names=["G0", "G1", "G2", "G3"], published={"auc.G2": 0.84}, readers=readers, n_boot=100,
        )

    def test_writes_per_grade_plots(self, report: Report) -> None:
        """Per-grade AUC bars, OvR ROC, confusion and calibration PNGs exist."""
        _assert_pngs(report, {"roc.png", "per_grade_auc.png", "confusion.png", "calibration.png"})

    def test_markdown_numbers_equal_the_json(self, report: Report) -> None:
        """Every summary value and CI in report.md is the JSON value to three decimals."""
        _assert_md_matches_json(report)

    def test_per_grade_auc_and_weighted_kappa(self, report: Report) -> None:
        """Per-grade AUCs are one-vs-rest DeLong; quadratic kappa is model argmax against truth."""
        y, p = _ordinal_data()
        ovr = M.one_vs_rest_auc(y, p)
        for k, name in enumerate(["G0", "G1", "G2", "G3"]):
            auc_k = ovr[k]
            assert auc_k is not None and report.summary[f"auc.{name}"]["value"] == pytest.approx(auc_k.auc)
        assert report.summary["kappa.quadratic"]["value"] == pytest.approx(
            M.cohen_kappa(y, p.argmax(axis=1), "quadratic", labels=[0, 1, 2, 3]))
        assert "auc.ge_G1" in report.summary
        assert "readers.fleiss_kappa" in report.summary

    def test_multiclass_needs_probabilities(self, tmp_path: Path) -> None:
        """A multi-class report without probabilities is refused with a clear message."""
        with pytest.raises(ValueError, match="needs probabilities"):
            write_report(tmp_path, task="multiclass", y_true=[0, 1, 2], y_score=[0.1, 0.2, 0.3])


class TestGenerationReport:
    def test_ncc_ssim_report_with_examples(self, tmp_path: Path) -> None:
        """NCC/SSIM mean ± SD, a histogram and an example grid; markdown equals JSON."""
        rng = np.random.default_rng(0)
        reals = [rng.random((32, 32)) for _ in range(6)]
        gens = [r + rng.normal(0, 0.2, r.shape) for r in reals]
        nccs = [M.ncc(g, r) for g, r in zip(gens, reals, strict=True)]
        ssims = [M.ssim(g, r, data_range=1.0) for g, r in zip(gens, reals, strict=True)]
        rep = write_generation_report(tmp_path, nccs, ssims, {"ncc": (0.81, 0.78, 0.84), "ssim": 0.7},
                                      examples=[(r * 0.5, g, r) for g, r in zip(gens[:2], reals[:2], strict=True)],
                                      n_boot=200)
        _assert_pngs(rep, {"similarity_hist.png", "examples.png"})
        _assert_md_matches_json(rep)
        mean, sd = M.mean_sd(nccs)
        assert rep.summary["ncc"]["value"] == pytest.approx(mean)
        assert rep.summary["ncc"]["sd"] == pytest.approx(sd)
        rows = _md_rows((tmp_path / "report.md").read_text())
        assert rows["ncc"]["ours"] == f"{mean:.3f} ± {sd:.3f}"
        assert rows["ssim"]["pub"] == "0.700"


class TestDetectionReport:
    def test_ap_per_class_report(self, tmp_path: Path) -> None:
        """AP per class and mAP equal detection_ap; plots exist; markdown equals JSON."""
        gts, dets = [], []
        rng = np.random.default_rng(0)
        for i in range(12):
            for label in ("erosion", "effusion"):
                x, y = rng.uniform(0, 80, 2)
                gts.append(M.Box(f"img{i}", label, x, y, x + 10, y + 10))
                jitter = rng.normal(0, 1.5, 2)
                dets.append(M.Box(f"img{i}", label, x + jitter[0], y + jitter[1], x + 10 + jitter[0], y + 10,
                                  float(rng.random())))
                if rng.random() < 0.3:
                    dets.append(M.Box(f"img{i}", label, 90, 90, 99, 99, float(rng.random())))
        rep = write_detection_report(tmp_path, detections=dets, ground_truths=gts, published={"map": 0.8}, n_boot=50)
        _assert_pngs(rep, {"ap_per_class.png", "pr_detection.png"})
        _assert_md_matches_json(rep)
        res = M.detection_ap(dets, gts, 0.5)
        assert rep.summary["map"]["value"] == pytest.approx(res.mean_ap)
        assert rep.summary["ap.erosion"]["value"] == pytest.approx(res.per_class["erosion"])


class TestModelCard:
    @pytest.fixture(scope="class")
    @classmethod
    def report(cls, tmp_path_factory: pytest.TempPathFactory) -> Report:
        y, p, _ = _binary_data(3)
        return write_report(tmp_path_factory.mktemp("eval"), task="binary", y_true=y, y_score=p,
                            published={"auc": 0.93}, n_boot=100)

    def _card(self, out: Path, report: Report, flag: bool = True) -> Any:
        return write_model_card(
            out, model_id="toy_cls", version="0.1.0", name="Toy classifier", intended_use="Demonstration only.",
            inputs_and_routing="MR, SeriesDescription ~ /LGE/", labels=["clear", "lesion"],
            label_rule="lesion if any slice is marked", training_data="2,000 synthetic phantoms, seed 0",
            metrics=report.out_dir / "metrics.json", limits=["phantoms only", "single vendor style"],
            not_for_clinical_use=flag, weights_sha256="ab" * 32,
        )

    def test_card_warns_first_when_not_for_clinical_use(self, report: Report, tmp_path: Path) -> None:
        """The warning is the first line of card.md and a field of card.yaml."""
        card = self._card(tmp_path, report)
        first = card.markdown.read_text().splitlines()[0]
        assert NOT_FOR_CLINICAL_USE in first
        data = yaml.safe_load(card.yaml.read_text())
        assert data["not_for_clinical_use"] is True and data["warning"] == NOT_FOR_CLINICAL_USE

    def test_card_without_the_flag_has_no_warning(self, report: Report, tmp_path: Path) -> None:
        """Weights trained on real data carry no phantom warning."""
        card = self._card(tmp_path, report, flag=False)
        assert "NOT FOR CLINICAL USE" not in card.markdown.read_text()

    def test_card_numbers_equal_metrics_json(self, report: Report, tmp_path: Path) -> None:
        """card.yaml holds the metrics.json numbers exactly; card.md shows them to three decimals."""
        card = self._card(tmp_path, report)
        data = yaml.safe_load(card.yaml.read_text())
        summary = _strict_json(report.out_dir / "metrics.json")["summary"]
        rows = _md_rows(card.markdown.read_text())
        for key, r in summary.items():
            assert data["metrics"][key]["value"] == r["value"], key
            assert rows[key]["ours"] == _f3(r["value"]), key
        assert data["published"] == {"auc": 0.93}
        assert rows["auc"]["pub"] == "0.930"

    def test_card_yaml_carries_the_model_card_fields(self, report: Report, tmp_path: Path) -> None:
        """card.yaml has the fields models.base.ModelCard is built from, and the weights hash."""
        data = yaml.safe_load(self._card(tmp_path, report).yaml.read_text())
        for field in ("id", "version", "name", "manufacturer", "intended_use", "labels", "not_for_clinical_use",
                      "reference", "published", "weights_sha256", "limits", "training_data"):
            assert field in data, field
        assert data["id"] == "toy_cls" and data["version"] == "0.1.0"

    def test_card_refuses_a_malformed_hash(self, report: Report, tmp_path: Path) -> None:
        """The weights hash must be a sha256 hex digest."""
        with pytest.raises(ValueError, match="64 hexadecimal"):
            write_model_card(
                tmp_path, model_id="x", version="1", name="x", intended_use="x", inputs_and_routing="x", labels=["a"],
                label_rule="x", training_data="x", metrics=report.metrics, weights_sha256="not-a-hash",
            )
