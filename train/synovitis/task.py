"""Train, evaluate and document the four synovitis variants (`python -m train synovitis_<v> ...`).

The study's recipe on phantoms (`train.phantoms.joint_us`): one seeded cohort of joints, each
rendered as the variant sees it (static or cine, greyscale or power Doppler) and read through
`models.synovitis.transforms.to_input`, the sidecar's own call; a 70/15/15 patient-level split
stratified by grade (the same patients in every variant, so variants can be compared on the same
cases); the shared classifier loop (AdamW, cosine schedule, early stopping on validation macro
AUC); then the published evaluation on the test patients:

- per-grade one-vs-rest AUC with DeLong CIs (`write_report`, ordinal task, readers given);
- ICC(2,1) and ICC(3,1) between the model's grade and each reader's grade, and between readers;
- DeLong SPD vs SGS per grade on the same cases (the study's headline comparison), and dynamic
  vs static (DGS vs SGS, DPD vs SPD), written by `compare` once the weights exist.

With `--manifest`, fit and evaluate read DICOM files listed in a harness manifest (`label` the
combined grade 0-3; `reader1_grade`, `reader2_grade` optional) instead of phantoms.
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

from models.synovitis.net import SynovitisNet
from models.synovitis.transforms import VARIANTS, SynovitisTransform, to_input
from models.synovitis.wrapper import (
    LABELS,
    MANUFACTURER,
    PUBLISHED,
    PUBLISHED_ICC_RANGE,
    REFERENCE,
    build,
    intended_use,
    model_id,
)
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
from train.phantoms.joint_us import JointCase, case_dataset, sample_cases
from train.synovitis.export import task_export
from train.tasks import (
    CardRequest,
    DemoWeightsRequest,
    EvaluateRequest,
    ExportRequest,
    ExportResult,
    FitRequest,
    TaskSpec,
    register_task,
)

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "synovitis"
DEMO_SEED = 0


def weights_path(variant: str) -> Path:
    return MODEL_DIR / "weights" / f"{variant}.pt"


@dataclass(frozen=True)
class DemoConfig:
    """A small cohort and the demo net: a few CPU minutes per variant."""

    seed: int = DEMO_SEED
    n_patients: int = 150
    n_patients_cine: int = 90
    joints_per_patient: int = 4
    transform: SynovitisTransform = SynovitisTransform(size=96, frames=6)
    epochs: int = 12
    epochs_cine: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    size: str = "demo"


@dataclass(frozen=True)
class Arrays:
    """A cohort as network inputs with grades, patients and the two readers' grades."""

    x: np.ndarray
    y: np.ndarray
    patients: np.ndarray
    readers: np.ndarray  # (N, 2)
    case_ids: np.ndarray


def cohort(variant: str, cfg: DemoConfig) -> list[JointCase]:
    """The seeded cohort; cine variants use the first `n_patients_cine` patients of the same cohort."""
    cases = sample_cases(cfg.n_patients, cfg.seed, cfg.joints_per_patient)
    if VARIANTS[variant].cine:
        keep = {f"PH-RA{cfg.seed % 1000:03d}{p:04d}" for p in range(cfg.n_patients_cine)}
        cases = [c for c in cases if c.patient_id in keep]
    return cases


def arrays(cases: Sequence[JointCase], variant: str, transform: SynovitisTransform) -> Arrays:
    """Each case written as the variant's DICOM and read back by `to_input`."""
    spec = VARIANTS[variant]
    x = np.stack([to_input(case_dataset(c, doppler=spec.doppler, cine=spec.cine), variant, transform)
                  for c in cases])
    return Arrays(x, np.array([c.combined for c in cases], np.int64), np.array([c.patient_id for c in cases]),
                  np.array([c.readers for c in cases], np.int64), np.array([c.case_id for c in cases]))


def split(data: Arrays, seed: int) -> dict[str, np.ndarray]:
    """70/15/15 patient-level split, stratified by the patient's highest grade."""
    return split_indices(data.patients, data.y, (0.7, 0.15, 0.15), seed, patient_label="max")


def predict(net: SynovitisNet, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, 4) grade probabilities."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(torch.softmax(net(torch.from_numpy(x[i : i + batch_size])), 1).numpy())
    return np.concatenate(out).astype(np.float64)


def train_net(variant: str, data: Arrays, idx: dict[str, np.ndarray], cfg: DemoConfig, out_dir: Path,
              fit: FitConfig | None = None) -> tuple[SynovitisNet, FitResult]:
    spec = VARIANTS[variant]
    net = SynovitisNet(spec.channels, spec.cine, cfg.size)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(FlipGainArrays(data.x[idx["train"]], data.y[idx["train"]], True), batch_size=cfg.batch_size,
                       shuffle=True, generator=gen)
    val = DataLoader(FlipGainArrays(data.x[idx["val"]], data.y[idx["val"]], False), batch_size=64)
    fit = fit or FitConfig(epochs=cfg.epochs_cine if spec.cine else cfg.epochs, lr=cfg.lr, seed=cfg.seed,
                           patience=5, progress=False, scheduler="cosine")
    result = fit_classifier(net, train, val, config=fit, out_dir=out_dir, task="multiclass", val_metric="auc")
    return net, result


def agreement(pred: np.ndarray, readers: np.ndarray) -> dict[str, Any]:
    """ICC(2,1) and ICC(3,1) of the model's grade with each reader, and between the readers."""
    out: dict[str, Any] = {}
    for j in range(readers.shape[1]):
        r = M.icc(np.column_stack([pred, readers[:, j]]))
        out[f"icc2_1.model_vs_reader{j + 1}"] = r.icc2_1.value
        out[f"icc3_1.model_vs_reader{j + 1}"] = r.icc3_1.value
    r = M.icc(readers)
    out["icc2_1.reader1_vs_reader2"] = r.icc2_1.value
    out["published_icc_range_model_vs_radiologists"] = list(PUBLISHED_ICC_RANGE)
    return out


def evaluate_arrays(variant: str, net: SynovitisNet, data: Arrays, test: np.ndarray, out_dir: Path,
                    seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Report (metrics.json, report.md, plots) on the test cases; returns the summary values."""
    p = predict(net, data.x[test])
    y, readers = data.y[test], data.readers[test]
    pred = p.argmax(axis=1)
    more = {"variant": VARIANTS[variant].code, **agreement(pred, readers), **(extra or {})}
    report = write_report(out_dir, task="ordinal", y_true=y, probabilities=p, class_names=list(LABELS),
                          readers=readers, reader_names=["reader1", "reader2"],
                          published={k: v for k, v in PUBLISHED[variant].items() if "cohort" not in k},
                          extra=more, title=f"Synovitis {VARIANTS[variant].code} on held-out phantom patients",
                          n_boot=300, seed=seed)
    np.save(out_dir / "test_probabilities.npy", p)
    (out_dir / "test_cases.json").write_text(json.dumps([str(c) for c in data.case_ids[test]]))
    s = report.summary
    summary = {k: s[k]["value"] for k in s if k.startswith("auc.") or k in ("accuracy", "kappa.quadratic")}
    summary.update({k: v for k, v in more.items() if k.startswith("icc")})
    return summary


def _card(variant: str, evaluation_dir: Path, checkpoint: Path, out_dir: Path, cfg: DemoConfig) -> Path:
    spec = VARIANTS[variant]
    meta = checkpoint_metadata(checkpoint)
    sha = sha256_of(checkpoint)
    sampling = "Doppler-aware" if spec.doppler else "uniform"
    frames = f", {cfg.transform.frames} frames ({sampling} sampling)" if spec.cine else ""
    kind = f"US {'cine (multi-frame)' if spec.cine else 'still'} {'with power Doppler' if spec.doppler else 'greyscale'}"
    pooling = ("per-frame backbone with mean+max temporal pooling (cheaper than 3D, keeps the Doppler peak)."
               if spec.cine else "2D.")
    write_model_card(
        out_dir, model_id=model_id(variant), version=str(meta.get("version", "unknown")),
        name=f"RA synovitis grade, {spec.name} ({spec.code})", intended_use=intended_use(variant),
        inputs_and_routing=(
            f"{kind} images of hand, wrist, knee or foot joints, routed by conf/routes.yaml (a description naming a joint: "
            "MCP, PIP, DIP, MTP2-5, wrist, knee, synov; or BodyPartExamined HAND, WRIST, FINGER, KNEE; MTP1 goes "
            "to gout_mtp1) and the predicates "
            f"us.is_cine={spec.cine}, us.has_doppler={spec.doppler}. Front end (models/us): region crop from the "
            "US Region Calibration module (sector fallback), text/caliper masking, power Doppler as its own channel, "
            f"letterbox to {cfg.transform.size} px{frames}. Network: MONAI ResNet-10 layout (stride-2 stem), "
            + pooling),
        labels=LABELS, label_rule=("EULAR-OMERACT combined score: 0 no synovial hypertrophy (SH); otherwise the higher "
                                   "of the SH grade (1 within the bone line, 2 beyond it flat/concave, 3 convex) "
                                   "and the power Doppler grade (1 up to three spots, 2 < half, 3 > half)."),
        training_data=(f"Synthetic joint phantoms (train/phantoms/joint_us.py), seed {cfg.seed}, 70/15/15 "
                       "patient-level split, two simulated readers."),
        metrics=evaluation_dir / "metrics.json",
        limits=["Trained and tested on synthetic phantoms only; says nothing about patients.",
                "Phantom synovium, vessels and bones are far simpler than real joints; no tenosynovitis, "
                "no probe pressure, no blooming or motion artefact.",
                "Published figures are from real cohorts (best model per grade: DPD/SGS/DGS/SPD, AUC "
                "0.87/0.95/0.74/0.95; ICC with radiologists 0.239-0.756) and are not comparable."],
        weights_sha256=sha, manufacturer=MANUFACTURER, reference=REFERENCE)
    return out_dir


def compare(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """DeLong per grade between variants on the same test cases (where both weights exist)."""
    result: dict[str, Any] = {}
    pairs = (("spd", "sgs"), ("dgs", "sgs"), ("dpd", "spd"))
    for a, b in pairs:
        if not (weights_path(a).exists() and weights_path(b).exists()):
            continue
        ma, mb = build(a, weights_path(a)), build(b, weights_path(b))
        cases = cohort(a if VARIANTS[a].cine else b, cfg)  # the smaller (cine) cohort when one is cine
        data_a = arrays(cases, a, cfg.transform)
        idx = split(data_a, cfg.seed)["test"]
        data_b = arrays([cases[i] for i in idx], b, cfg.transform)
        pa, pb = predict(ma.net, data_a.x[idx]), predict(mb.net, data_b.x)
        y = data_a.y[idx]
        rows = {}
        for k, name in enumerate(LABELS):
            yk = y == k
            if 0 < yk.sum() < len(y):
                t = M.delong_test(yk, pa[:, k], pb[:, k])
                rows[name] = {f"auc_{a}": t.auc_a, f"auc_{b}": t.auc_b, "diff": t.difference, "p": t.p}
        result[f"{a}_vs_{b}"] = {"n_cases": len(y), "per_grade": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    return result


def demo_weights_variant(variant: str, cfg: DemoConfig = DemoConfig(), out: Path | None = None,
                         report_dir: Path | None = None, write_card: bool = True) -> dict[str, Any]:
    """Rebuild one variant's demo weights from phantoms with a fixed seed, evaluate, write the card."""
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    out = out or weights_path(variant)
    data = arrays(cohort(variant, cfg), variant, cfg.transform)
    idx = split(data, cfg.seed)
    print(f"{variant}: {len(data.y)} cases, grades {np.bincount(data.y, minlength=4).tolist()}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        net, result = train_net(variant, data, idx, cfg, Path(tmp))
    print(f"{variant}: best val AUC {result.best_metric:.3f} at epoch {result.best_epoch}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    version = f"0.1.0-demo.phantom.seed{cfg.seed}"
    metadata = {"model_id": model_id(variant), "variant": variant, "version": version, "size": cfg.size,
                "input_size": cfg.transform.size, "frames": cfg.transform.frames, "seed": cfg.seed,
                "not_for_clinical_use": True, "trained_on": f"phantoms: {len(data.y)} joints"}
    sha = save_state_and_metadata(net, metadata, out, half=True)  # float16 halves the file
    model = build(variant, out)  # evaluate the saved file through the serving path
    report_dir = report_dir or Path(tempfile.mkdtemp(prefix=f"synovitis_{variant}_eval_"))
    summary = evaluate_arrays(variant, model.net, data, idx["test"], report_dir, cfg.seed)
    if write_card:
        _card(variant, report_dir, out, MODEL_DIR / "cards" / variant, cfg)
    summary.update({"weights": str(out), "sha256": sha, "bytes": out.stat().st_size,
                    "report_dir": str(report_dir), "seconds": round(time.perf_counter() - start, 1)})
    return summary


# --- harness hooks ---------------------------------------------------------------------------


def _manifest_arrays(manifest: Path, variant: str, split_name: str, transform: SynovitisTransform) -> Arrays:
    m = Manifest.read(manifest)
    part = m.split(split_name)
    if len(part) == 0:
        raise ValueError(f"the manifest has no rows in split {split_name!r}")
    xs, ys, pats, readers, ids = [], [], [], [], []
    for row in part.rows:
        path = Path(row.path) if Path(row.path).is_absolute() else m.root / row.path
        xs.append(to_input(pydicom.dcmread(path), variant, transform))
        ys.append(int(row.label))
        pats.append(row.patient_id)
        r = [row.reader_scores.get(f"reader{j}_grade", float("nan")) for j in (1, 2)]
        readers.append([int(v) if np.isfinite(v) else int(row.label) for v in r])
        ids.append(row.sop_instance_uid or row.path)
    return Arrays(np.stack(xs), np.array(ys, np.int64), np.array(pats), np.array(readers, np.int64), np.array(ids))


def _fit(variant: str, request: FitRequest) -> FitResult:
    cfg = replace(DemoConfig(), seed=request.config.seed, batch_size=request.batch_size)
    if request.manifest is not None:
        tr = _manifest_arrays(request.manifest, variant, "train", cfg.transform)
        va = _manifest_arrays(request.manifest, variant, "val", cfg.transform)
        data = Arrays(np.concatenate([tr.x, va.x]), np.concatenate([tr.y, va.y]),
                      np.concatenate([tr.patients, va.patients]), np.concatenate([tr.readers, va.readers]),
                      np.concatenate([tr.case_ids, va.case_ids]))
        idx = {"train": np.arange(len(tr.y)), "val": np.arange(len(tr.y), len(data.y))}
    else:
        data = arrays(cohort(variant, cfg), variant, cfg.transform)
        idx = split(data, cfg.seed)
    _, result = train_net(variant, data, idx, cfg, request.out_dir, fit=request.config)
    return result


def _evaluate(variant: str, request: EvaluateRequest) -> Path:
    cfg = replace(DemoConfig(), seed=request.seed)
    spec = VARIANTS[variant]
    net = SynovitisNet(spec.channels, spec.cine, cfg.size)
    try:
        load_weights(net, request.checkpoint)
    except ValueError:
        net = build(variant, request.checkpoint).net
    if request.manifest is not None:
        data = _manifest_arrays(request.manifest, variant, request.split, cfg.transform)
        test = np.arange(len(data.y))
    else:
        data = arrays(cohort(variant, cfg), variant, cfg.transform)
        test = split(data, cfg.seed)[request.split]
    evaluate_arrays(variant, net, data, test, request.out_dir, request.seed)
    return request.out_dir


def _register(variant: str) -> TaskSpec:
    def fit(request: FitRequest) -> FitResult:
        return _fit(variant, request)

    def evaluate(request: EvaluateRequest) -> Path:
        return _evaluate(variant, request)

    def card(request: CardRequest) -> Path:
        return _card(variant, request.evaluation_dir, request.checkpoint, request.out_dir, DemoConfig())

    def demo(request: DemoWeightsRequest) -> Path:
        cfg = replace(DemoConfig(), seed=request.seed)
        out = request.out_path or weights_path(variant)
        summary = demo_weights_variant(variant, cfg, out, request.work_dir / "evaluate")
        if variant in ("spd", "dpd", "dgs"):
            summary["comparison"] = compare(cfg, request.work_dir / "compare")
        print(json.dumps(summary, indent=2, default=str))
        return out

    def export(request: ExportRequest) -> ExportResult:
        return task_export(variant, request)

    spec = VARIANTS[variant]
    return register_task(TaskSpec(
        name=model_id(variant), summary=f"RA synovitis grade 0-3, {spec.name} ({spec.code}), MONAI ResNet",
        fit=fit, evaluate=evaluate, card=card, demo_weights=demo, export=export,
        default_config=FitConfig(epochs=12, lr=2e-3, patience=5)))


TASKS = {v: _register(v) for v in VARIANTS}
