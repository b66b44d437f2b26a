"""Train, evaluate and document the gout MTP1 model (`python -m train gout_mtp1 ...`).

The study's recipe on phantoms (`train.phantoms.mtp1`): patients with one image per view
(dorsal, medial, plantar), a 6:4 patient-level split stratified by label (the study's ratio;
a sixth of the training patients is held out for early stopping and the threshold), the shared
classifier loop on one ResNet-50 across all views, the threshold at Youden's point on
validation, then on the test patients:

- AUC (DeLong CI), accuracy, sensitivity, specificity (bootstrap CIs) at that threshold;
- AUC per view of the single model;
- the per-view alternative: one model per view trained the same way on that view's images,
  each test image scored by its view's model, and the DeLong test single vs per-view on the
  same images (published: AUC 0.92 vs 0.92, P = 0.62).

With `--manifest` (label normal/abnormal, `view` column), fit and evaluate read DICOM files.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch.utils.data import DataLoader

from models.gout_mtp1.net import GoutNet
from models.gout_mtp1.transforms import GoutTransform, to_input, view_of
from models.gout_mtp1.wrapper import INTENDED_USE, LABELS, MANUFACTURER, MODEL_ID, NAME, REFERENCE, build
from train.common import metrics as M
from train.common.cards import write_model_card
from train.common.data import FlipGainArrays
from train.common.loops import fit_classifier, load_weights
from train.common.manifest import Manifest
from train.common.reports import write_report
from train.common.seeding import seed_everything
from train.common.splits import split_indices
from train.common.trainer import FitConfig, FitResult
from train.common.weights import checkpoint_metadata, save_state_and_metadata, sha256_of
from train.gout_mtp1.export import task_export
from train.phantoms.mtp1 import VIEWS, Mtp1Case, case_dataset, sample_cases
from train.tasks import CardRequest, DemoWeightsRequest, EvaluateRequest, FitRequest, TaskSpec, register_task

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "gout_mtp1"
DEMO_WEIGHTS = MODEL_DIR / "weights" / "demo.pt"
PUBLISHED_FOR_REPORT = {"auc": 0.92, "accuracy": 0.8595, "sensitivity": 0.8360, "specificity": 0.8836}


@dataclass(frozen=True)
class DemoConfig:
    """A small cohort and the quarter-width ResNet-50: a few CPU minutes."""

    seed: int = 0
    n_patients: int = 240
    transform: GoutTransform = GoutTransform(size=96)
    epochs: int = 16
    epochs_per_view: int = 16
    batch_size: int = 32
    lr: float = 2e-3
    size: str = "resnet50_quarter"


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray
    y: np.ndarray
    patients: np.ndarray
    views: np.ndarray


def arrays(cases: Sequence[Mtp1Case], transform: GoutTransform) -> Arrays:
    """Each case written as DICOM and read back by `to_input`; the view as the headers give it."""
    dsets = [case_dataset(c) for c in cases]
    return Arrays(np.stack([to_input(ds, transform) for ds in dsets]),
                  np.array([int(c.abnormal) for c in cases], np.int64),
                  np.array([c.patient_id for c in cases]), np.array([view_of(ds) for ds in dsets]))


def split(data: Arrays, seed: int) -> dict[str, np.ndarray]:
    """6:4 patient-level train:test; a sixth of the training patients for validation."""
    return split_indices(data.patients, data.y, (0.5, 0.1, 0.4), seed, patient_label="max")


def predict(net: GoutNet, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    net.eval()
    with torch.inference_mode():
        return np.concatenate([torch.sigmoid(net(torch.from_numpy(x[i : i + batch_size]))).numpy()
                               for i in range(0, len(x), batch_size)]).astype(np.float64)


def train_net(data: Arrays, tr: np.ndarray, va: np.ndarray, cfg: DemoConfig, out_dir: Path, epochs: int,
              fit: FitConfig | None = None) -> tuple[GoutNet, FitResult]:
    net = GoutNet(cfg.size)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(FlipGainArrays(data.x[tr], data.y[tr], True), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    val = DataLoader(FlipGainArrays(data.x[va], data.y[va], False), batch_size=64)
    fit = fit or FitConfig(epochs=epochs, lr=cfg.lr, seed=cfg.seed, patience=6, progress=False, scheduler="cosine")
    return net, fit_classifier(net, train, val, config=fit, out_dir=out_dir, task="binary", val_metric="auc")


def per_view_comparison(data: Arrays, idx: dict[str, np.ndarray], p_single: np.ndarray, threshold: float,
                        cfg: DemoConfig) -> dict[str, Any]:
    """Per-view models trained like the single one; DeLong single vs per-view on the test images."""
    test = idx["test"]
    p_view = np.zeros(len(test))
    thresholds = {}
    for v in VIEWS:
        tr = idx["train"][data.views[idx["train"]] == v]
        va = idx["val"][data.views[idx["val"]] == v]
        with tempfile.TemporaryDirectory() as tmp:
            net, _ = train_net(data, tr, va, cfg, Path(tmp), cfg.epochs_per_view)
        thresholds[v] = M.youden_threshold(data.y[va], predict(net, data.x[va]))
        sel = data.views[test] == v
        p_view[sel] = predict(net, data.x[test][sel])
    y = data.y[test]
    t = M.delong_test(y, p_single, p_view)
    pred_view = np.array([p_view[i] >= thresholds[data.views[test][i]] for i in range(len(test))])
    tm = M.threshold_metrics(y, pred_view.astype(float), 0.5, n_boot=200, seed=cfg.seed)
    out: dict[str, Any] = {"auc_single": t.auc_a, "auc_per_view": t.auc_b, "delong_p": t.p,
                           "delong_z": t.z, "per_view_thresholds": thresholds,
                           "published": {"auc_single": 0.92, "auc_per_view": 0.92, "delong_p": 0.62}}
    for k in ("accuracy", "sensitivity", "specificity"):
        out[f"per_view_{k}"] = tm.metrics[k].value
    return out


def evaluate_arrays(net: GoutNet, data: Arrays, idx: dict[str, np.ndarray], threshold: float, out_dir: Path,
                    cfg: DemoConfig, per_view: bool) -> dict[str, Any]:
    test = idx["test"]
    p = predict(net, data.x[test])
    y = data.y[test]
    extra: dict[str, Any] = {"per_view_auc": {}}
    for v in (*VIEWS, "unknown"):
        sel = data.views[test] == v
        if sel.any() and 0 < y[sel].sum() < sel.sum():
            extra["per_view_auc"][v] = M.roc_auc_delong(y[sel], p[sel]).auc
    if per_view:
        extra["single_vs_per_view"] = per_view_comparison(data, idx, p, threshold, cfg)
    report = write_report(out_dir, task="binary", y_true=y, y_score=p, class_names=list(LABELS),
                          threshold=threshold, published=PUBLISHED_FOR_REPORT, extra=extra,
                          title="Gout MTP1 on held-out phantom patients (single model, all views)",
                          n_boot=300, seed=cfg.seed)
    s = report.summary
    out: dict[str, Any] = {k: s[k]["value"] for k in ("auc", "accuracy", "sensitivity", "specificity") if k in s}
    out.update(extra)
    return out


def _card(evaluation_dir: Path, checkpoint: Path, out_dir: Path, cfg: DemoConfig) -> Path:
    meta = checkpoint_metadata(checkpoint)
    write_model_card(
        out_dir, model_id=MODEL_ID, version=str(meta.get("version", "unknown")), name=NAME,
        intended_use=INTENDED_USE,
        inputs_and_routing=(
            "US stills of the first metatarsophalangeal joint (dorsal, medial or plantar view), routed by "
            "conf/routes.yaml (description naming MTP1 / first MTP / hallux / great toe / gout, or "
            "BodyPartExamined TOE); before the synovitis routes. Front end (models/us): region crop, text and "
            f"caliper masking, greyscale channel, letterbox to {cfg.transform.size} px. One network for all "
            "views; the view (View Code Sequence or description, else unknown) is recorded in the SR notes. "
            f"Threshold {meta.get('threshold', 0.5):.3f} (Youden's point on validation)."),
        labels=LABELS, label_rule="abnormal when P(abnormal) >= the card's threshold",
        training_data=(f"Synthetic MTP1 phantoms (train/phantoms/mtp1.py), seed {cfg.seed}: {cfg.n_patients} patients "
                       "x 3 views, normal or gout (1-3 of double contour, aggregates, tophus, erosion, effusion); "
                       "6:4 patient-level split. ResNet-50 layout at quarter width (MONAI)."),
        metrics=evaluation_dir / "metrics.json",
        limits=["Trained and tested on synthetic phantoms only; says nothing about patients.",
                "Phantom gout signs are idealised; no osteoarthritis, hallux valgus or post-surgical joints.",
                "Published: AUC 0.92 single vs 0.92 per-view (P = 0.62), accuracy 85.95 %, sensitivity "
                "83.60 %, specificity 88.36 % on real images; not comparable with phantom numbers."],
        weights_sha256=sha256_of(checkpoint), manufacturer=MANUFACTURER,
        reference=REFERENCE)
    return out_dir


def demo_weights(cfg: DemoConfig = DemoConfig(), out: Path = DEMO_WEIGHTS, report_dir: Path | None = None,
                 write_card: bool = True, per_view: bool = True) -> dict[str, Any]:
    """Rebuild the demo weights from phantoms with a fixed seed; evaluate as published; write the card."""
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    data = arrays(sample_cases(cfg.n_patients, cfg.seed), cfg.transform)
    idx = split(data, cfg.seed)
    print(f"gout: {len(data.y)} images, {data.y.mean():.2f} abnormal; {time.perf_counter() - start:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        net, result = train_net(data, idx["train"], idx["val"], cfg, Path(tmp), cfg.epochs)
    threshold = float(np.clip(M.youden_threshold(data.y[idx["val"]], predict(net, data.x[idx["val"]])), 1e-3, 1 - 1e-3))
    print(f"gout: best val AUC {result.best_metric:.3f} at epoch {result.best_epoch}; threshold {threshold:.3f}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    version = f"0.1.0-demo.phantom.seed{cfg.seed}"
    metadata = {"model_id": MODEL_ID, "version": version, "threshold": threshold, "size": cfg.size,
                "input_size": cfg.transform.size, "seed": cfg.seed, "not_for_clinical_use": True,
                "trained_on": f"phantoms: {cfg.n_patients} patients x 3 views"}
    sha = save_state_and_metadata(net, metadata, out, half=True)
    model = build(out)
    report_dir = report_dir or Path(tempfile.mkdtemp(prefix="gout_eval_"))
    summary = evaluate_arrays(model.net, data, idx, threshold, report_dir, cfg, per_view)
    if write_card:
        _card(report_dir, out, MODEL_DIR, cfg)
    summary.update({"weights": str(out), "sha256": sha, "bytes": out.stat().st_size, "threshold": threshold,
                    "report_dir": str(report_dir), "seconds": round(time.perf_counter() - start, 1)})
    return summary


# --- harness hooks ---------------------------------------------------------------------------


def _manifest_arrays(manifest: Path, split_name: str, transform: GoutTransform) -> Arrays:
    m = Manifest.read(manifest)
    part = m.split(split_name)
    if len(part) == 0:
        raise ValueError(f"the manifest has no rows in split {split_name!r}")
    xs, ys, pats, views = [], [], [], []
    for row in part.rows:
        ds = pydicom.dcmread(Path(row.path) if Path(row.path).is_absolute() else m.root / row.path)
        xs.append(to_input(ds, transform))
        if row.label not in LABELS:
            raise ValueError(f"label {row.label!r} is not one of {LABELS}")
        ys.append(LABELS.index(row.label))
        pats.append(row.patient_id)
        views.append(row.view or view_of(ds))
    return Arrays(np.stack(xs), np.array(ys, np.int64), np.array(pats), np.array(views))


def fit(request: FitRequest) -> FitResult:
    cfg = replace(DemoConfig(), seed=request.config.seed, batch_size=request.batch_size)
    if request.manifest is not None:
        tr, va = (_manifest_arrays(request.manifest, s, cfg.transform) for s in ("train", "val"))
        data = Arrays(np.concatenate([tr.x, va.x]), np.concatenate([tr.y, va.y]),
                      np.concatenate([tr.patients, va.patients]), np.concatenate([tr.views, va.views]))
        idx = {"train": np.arange(len(tr.y)), "val": np.arange(len(tr.y), len(data.y))}
    else:
        data = arrays(sample_cases(cfg.n_patients, cfg.seed), cfg.transform)
        idx = split(data, cfg.seed)
    _, result = train_net(data, idx["train"], idx["val"], cfg, request.out_dir, cfg.epochs, fit=request.config)
    return result


def evaluate(request: EvaluateRequest) -> Path:
    cfg = replace(DemoConfig(), seed=request.seed)
    net = GoutNet(cfg.size)
    threshold = 0.5
    try:
        load_weights(net, request.checkpoint)
    except ValueError:
        model = build(request.checkpoint)
        net, threshold = model.net, model.threshold
    if request.manifest is not None:
        data = _manifest_arrays(request.manifest, request.split, cfg.transform)
        idx = {"test": np.arange(len(data.y))}
        evaluate_arrays(net, data, idx, threshold, request.out_dir, cfg, per_view=False)
    else:
        data = arrays(sample_cases(cfg.n_patients, cfg.seed), cfg.transform)
        idx = split(data, cfg.seed)
        evaluate_arrays(net, data, {**idx, "test": idx[request.split]}, threshold, request.out_dir, cfg, per_view=False)
    return request.out_dir


def card(request: CardRequest) -> Path:
    return _card(request.evaluation_dir, request.checkpoint, request.out_dir, DemoConfig())


def demo(request: DemoWeightsRequest) -> Path:
    out = request.out_path or DEMO_WEIGHTS
    summary = demo_weights(replace(DemoConfig(), seed=request.seed), out, request.work_dir / "evaluate")
    print(json.dumps(summary, indent=2, default=str))
    return out


TASK = register_task(TaskSpec(
    name=MODEL_ID, summary="gout at MTP1 on ultrasound, normal vs abnormal, one ResNet-50 across views",
    fit=fit, evaluate=evaluate, card=card, demo_weights=demo, export=task_export,
    default_config=FitConfig(epochs=10, lr=2e-3, patience=4)))
