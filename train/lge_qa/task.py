"""Train, evaluate and rebuild the demo weights of the LGE QA model (`models/lge_qa`).

    python -m train.lge_qa.task demo-weights [--out models/lge_qa/weights/demo.pt] [--seed 2024]
    python -m train.lge_qa.task evaluate --weights PATH [--out DIR] [--seed 7]

The study's recipe on phantoms: a cohort of short-axis stacks from `train.phantoms.lge`, labels
from the two readers' VAS (`models.lge_qa.labels`), a 70/15/15 patient-level split stratified by
label (`train.common.splits.patient_split`), the shared classifier loop
(`train.common.loops.fit_classifier`, AdamW, cosine schedule, early stopping on validation AUC),
the operating threshold chosen on validation, then the report (`train.common.reports`) and the
card (`train.common.cards`) on the held-out test patients.

Every slice goes through `psir_dataset` (vendor-style DICOM, rotating Siemens / Philips / GE
storage) and `models.lge_qa.transforms.slice_to_tensor`, the call the sidecar makes in service.

Threshold: the published operating point favours precision (0.97) over recall (0.80): an alert
should rarely be a false alarm during a scan. On validation we take the lowest threshold whose
precision is at least `target_precision` (0.95 by default), i.e. the highest recall at that
precision; if no threshold reaches it, the threshold that maximises F0.5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from models.findings import ImageRef
from models.lge_qa import labels as L
from models.lge_qa.net import EfficientNetV2, count_parameters
from models.lge_qa.transforms import TransformConfig, slice_to_tensor
from models.lge_qa.wrapper import INTENDED_USE, MANUFACTURER, NAME, REFERENCE, build, load_checkpoint
from train.common.loops import FitConfig, fit_classifier
from train.common.seeding import seed_everything
from train.common.splits import assert_patient_disjoint, patient_split
from train.phantoms.lge import CONFUSER_KINDS, VENDORS, LgeSlice, lge_cohort, psir_dataset

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "lge_qa"
DEMO_WEIGHTS = MODEL_DIR / "weights" / "demo.pt"
DEMO_SEED = 0
#: the study's figures under the report's metric keys (recall is sensitivity)
PUBLISHED_FOR_REPORT: dict[str, float] = {
    "accuracy": 0.94, "auc": 0.94, "sensitivity": 0.80, "precision": 0.97, "f1": 0.87,
}
#: the demo cohort's kinds: half clear (no LGE / LGE), half the five confusers, so each confuser
#: has enough training slices to be learned (in the default mix thin LGE is 8 %)
TRAINING_MIX: dict[str, float] = {"no_lge": 0.25, "lge": 0.25, **dict.fromkeys(CONFUSER_KINDS, 0.1)}
#: the demo crop: 72 px at 1.8 mm (130 mm) holds the left ventricle wherever the plan puts it
#: (+-20 mm off centre, epicardium <= 39 mm), so the net spends its pixels on the heart; the
#: phantoms' pixels are 1.0-1.9 mm, and the CPU budget (two shared cores) rules out finer grids
DEMO_TRANSFORM = TransformConfig(spacing_mm=1.8, size=72)


@dataclass(frozen=True)
class DemoConfig:
    """What `demo-weights` trains: a small cohort and a tiny net, about 20 minutes of one CPU core
    (400 patients, 50 epochs: held-out AUC 0.957; 240 patients and 40 epochs gave 0.899)."""

    seed: int = DEMO_SEED
    n_patients: int = 400
    slices_per_patient: int = 8
    size: str = "tiny"
    transform: TransformConfig = DEMO_TRANSFORM
    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-3
    target_precision: float = 0.95
    torch_threads: int = 1
    mix: tuple[tuple[str, float], ...] = tuple(TRAINING_MIX.items())
    init: Path | None = None  # continue from these weights (same size and crop), a new schedule
    patience: int = 12  # early stopping: epochs without a better validation AUC (0: never)


@dataclass(frozen=True)
class Arrays:
    """A cohort as network inputs, targets (1 = low certainty), patient ids and reader VAS."""

    x: np.ndarray  # (N, 1, H, W) float32
    y: np.ndarray  # (N,) int64
    patients: np.ndarray  # (N,) str
    vas: np.ndarray  # (N, 2) float
    kinds: np.ndarray  # (N,) str


def cohort_arrays(slices: Sequence[LgeSlice], transform: TransformConfig) -> Arrays:
    """Each slice written as vendor DICOM (vendors in turn) and read by `slice_to_tensor`."""
    x = np.stack([
        slice_to_tensor(psir_dataset(s, vendor=VENDORS[i % len(VENDORS)]), None, transform)
        for i, s in enumerate(slices)
    ])
    y = np.array([int(s.label == L.LOW_CERTAINTY) for s in slices], dtype=np.int64)
    return Arrays(x, y, np.array([s.patient_id for s in slices]), np.array([s.vas for s in slices]),
                  np.array([s.kind for s in slices]))


class _Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random flips and 90-degree turns (vendors display short axis differently), +-15 % gain.

    Draws from torch's global generator, which the trainer seeds.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: bool) -> None:
        self.x, self.y, self.augment = torch.from_numpy(x), torch.from_numpy(y), augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            r = torch.rand(4)
            if r[0] < 0.5:
                img = img.flip(-1)
            if r[1] < 0.5:
                img = img.flip(-2)
            img = torch.rot90(img, int(r[2] * 4) % 4, (-2, -1))
            img = (img * (0.85 + 0.3 * r[3])).clamp(-1, 1)
        return img, self.y[i]


def choose_threshold(y: np.ndarray, p: np.ndarray, target_precision: float = 0.95) -> float:
    """Lowest threshold with validation precision >= target (highest recall there), else max F0.5."""
    candidates = np.unique(p)
    best_t, best_f = 0.5, -1.0
    chosen: float | None = None
    for t in candidates[::-1]:  # high to low: recall grows
        pred = p >= t
        tp = float((pred & (y == 1)).sum())
        fp = float((pred & (y == 0)).sum())
        fn = float((~pred & (y == 1)).sum())
        if tp == 0:
            continue
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        if precision >= target_precision:
            chosen = float(t)
        f05 = 1.25 * precision * recall / (0.25 * precision + recall)
        if f05 > best_f:
            best_f, best_t = f05, float(t)
    t = chosen if chosen is not None else best_t
    return float(min(max(t, 1e-4), 1 - 1e-4))


def predict(net: EfficientNetV2, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(low certainty) for (N, 1, H, W) inputs."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(torch.sigmoid(net(torch.from_numpy(x[i : i + batch_size]))).numpy())
    return np.concatenate(out).astype(np.float64)


def save_checkpoint(net: EfficientNetV2, metadata: dict[str, Any], path: Path) -> str:
    """Write state_dict + metadata (loadable with weights_only=True); return its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "metadata": metadata}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inter_expert_accuracy(vas: np.ndarray) -> float:
    """Share of slices where the two readers' present/absent calls (VAS >= 50) agree."""
    calls = vas >= 50.0
    return float(np.mean(calls[:, 0] == calls[:, 1]))


def _cached_cohort(cfg: DemoConfig, report_dir: Path | None) -> Arrays:
    """The demo cohort's arrays, kept in `report_dir`/cohort.npz so a continued run does not
    draw and convert the same phantoms again (the file names the seed, size and crop)."""
    cache = None
    if report_dir is not None:
        t = cfg.transform
        cache = report_dir / f"cohort-s{cfg.seed}-n{cfg.n_patients}-{t.size}px-{t.spacing_mm}mm.npz"
        if cache.is_file():
            with np.load(cache) as f:
                return Arrays(f["x"], f["y"], f["patients"], f["vas"], f["kinds"])
    slices = lge_cohort(cfg.n_patients, cfg.seed, cfg.slices_per_patient, dict(cfg.mix))
    data = cohort_arrays(slices, cfg.transform)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=data.x, y=data.y, patients=data.patients, vas=data.vas, kinds=data.kinds)
    return data


def demo_weights(cfg: DemoConfig = DemoConfig(), out: Path = DEMO_WEIGHTS,
                 report_dir: Path | None = None, write_card: bool = True) -> dict[str, Any]:
    """Rebuild the demo weights from phantoms with a fixed seed; evaluate on the test patients."""
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    data = _cached_cohort(cfg, report_dir)
    splits = patient_split(data.patients, data.y, (0.7, 0.15, 0.15), seed=cfg.seed)
    assert_patient_disjoint(data.patients, splits)
    idx = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
    print(f"cohort: {len(data.y)} slices, {data.y.mean():.2f} low certainty; "
          + ", ".join(f"{k} {len(v)}" for k, v in idx.items())
          + f"; {time.perf_counter() - start:.0f} s", flush=True)

    net = EfficientNetV2(cfg.size)
    if cfg.init is not None:
        state, _ = load_checkpoint(cfg.init)
        net.load_state_dict(state)
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(_Augmented(data.x[idx["train"]], data.y[idx["train"]], True),
                              batch_size=cfg.batch_size, shuffle=True, generator=loader_gen)
    val_loader = DataLoader(_Augmented(data.x[idx["val"]], data.y[idx["val"]], False),
                            batch_size=64)
    fit = FitConfig(epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, patience=cfg.patience, progress=False,
                    scheduler="cosine")
    with tempfile.TemporaryDirectory() as tmp:  # the fit log (one JSON line per epoch) is in fit/
        fit_dir = report_dir / "fit" if report_dir is not None else Path(tmp)
        result = fit_classifier(net, train_loader, val_loader, config=fit, out_dir=fit_dir,
                                task="binary", val_metric="auc")
    print(f"fit: best val AUC {result.best_metric:.3f} at epoch {result.best_epoch}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    p_val = predict(net, data.x[idx["val"]])
    threshold = choose_threshold(data.y[idx["val"]], p_val, cfg.target_precision)
    version = f"0.1.0-demo.phantom.seed{cfg.seed}"
    metadata: dict[str, Any] = {
        "model_id": "lge_qa",
        "version": version,
        "threshold": threshold,
        "size": cfg.size,
        "spacing_mm": cfg.transform.spacing_mm,
        "input_size": cfg.transform.size,
        "percentiles": list(cfg.transform.percentiles),
        "seed": cfg.seed,
        "vas_bounds": [L.VasBounds().low, L.VasBounds().high],
        "not_for_clinical_use": True,
        "trained_on": f"phantoms: {cfg.n_patients} patients x {cfg.slices_per_patient} slices",
        "continued_from": cfg.init.name if cfg.init is not None else None,
    }
    net.eval()
    sha = save_checkpoint(net, metadata, out)

    # evaluate the saved file through the serving path
    model = build(out, {})
    p_test = predict(model.net, data.x[idx["test"]])
    y_test = data.y[idx["test"]]
    summary = evaluate_scores(y_test, p_test, threshold, data.vas[idx["test"]],
                              report_dir or Path(tempfile.mkdtemp(prefix="lge_qa_eval_")), cfg, version, sha,
                              count_parameters(net), write_card)
    summary.update({"report_dir": str(report_dir) if report_dir else "(temporary folder)", "weights": str(out), "sha256": sha, "bytes": out.stat().st_size,
                    "threshold": threshold, "seconds": round(time.perf_counter() - start, 1)})
    return summary


def evaluate_scores(y: np.ndarray, p: np.ndarray, threshold: float, vas: np.ndarray, out_dir: Path,
                    cfg: DemoConfig, version: str, sha: str, n_params: int, write_card: bool) -> dict[str, Any]:
    """The harness report on held-out phantoms and, when asked, the model card beside the model."""
    from train.common.reports import write_report

    extra = {"inter_expert_accuracy": inter_expert_accuracy(vas), "parameters": n_params,
             "published_external": {"accuracy": 0.91, "auc": 0.91},
             "published_inter_expert_accuracy": 0.86}
    report = write_report(out_dir, task="binary", y_true=y, y_score=p, class_names=list(L.LABELS),
                          threshold=threshold, published=PUBLISHED_FOR_REPORT, extra=extra,
                          title="LGE QA on held-out phantom patients (demo weights)",
                          n_boot=500, seed=cfg.seed)
    s = report.summary
    out: dict[str, Any] = {k: s[k]["value"] for k in ("auc", "accuracy", "sensitivity", "precision", "f1") if k in s}
    if write_card:
        write_demo_card(cfg, report.metrics, threshold, sha, n_params, version)
    return out


def write_demo_card(cfg: DemoConfig, metrics: Any, threshold: float, sha: str, n_params: int, version: str,
                    extra_limits: Sequence[str] = ()) -> None:
    """models/lge_qa/card.md + card.yaml for the demo weights from their evaluation's metrics."""
    from train.common.cards import write_model_card

    write_model_card(
        MODEL_DIR, model_id="lge_qa", version=version, name=NAME, intended_use=INTENDED_USE,
        inputs_and_routing=(
            "Single-frame MR or Enhanced MR short-axis PSIR LGE slices, routed by conf/routes.yaml "
            "(description psir|lge|mde|de_|delay|late|viability) and the predicate mr.is_lge_psir "
            "(InversionTime 80-900 ms, inversion recovery, not a TI scout or T1 map, the real PSIR "
            "image rather than its magnitude companion: Siemens _PSIR/_MAG, Philips R_IR/M_IR, GE "
            "raw data type, ComplexImageComponent). Preprocessing: modality LUT, sign kept, "
            f"zero-preserving 1st/99th percentile scaling to [-1, 1], {cfg.transform.spacing_mm} mm "
            f"pixels, {cfg.transform.size}x{cfg.transform.size} centred crop. Output: P(low certainty); "
            f"a slice is flagged when P >= {threshold:.3f} (chosen on validation for precision >= "
            f"{cfg.target_precision}, the published precision-over-recall balance)."
        ),
        labels=L.LABELS,
        label_rule=L.describe(),
        training_data=(
            f"Synthetic PSIR phantoms (train/phantoms/lge.py), seed {cfg.seed}: {cfg.n_patients} "
            f"patients x {cfg.slices_per_patient} short-axis slices, 70/15/15 patient-level split; "
            "clear no-LGE, clear LGE and confusers (faint or thin enhancement, ghosting, poor "
            "nulling, low SNR) with two simulated readers' VAS; half clear, half confusers "
            "(TRAINING_MIX); domain-randomised per patient: heart position, field of view and "
            "pixel size, vendor PSIR scaling, rescale slope and window, coil bias, partial "
            "volume and noise. "
            f"EfficientNetV2 size '{cfg.size}' ({n_params} parameters), {cfg.epochs} epochs max"
            + (f", continued from an earlier run's weights ({cfg.init.name}) with a fresh schedule."
               if cfg.init is not None else ".")
        ),
        metrics=metrics,
        limits=[
            "Trained and tested on synthetic phantoms only; says nothing about patients.",
            "Phantom confusers are simpler than real ones (no arrhythmia, no fat-water swaps, "
            "no blood-pool/endocardium partial volume beyond a thin rim).",
            "Published external accuracy 0.91 / AUC 0.91 and inter-expert accuracy 0.86 have no "
            "phantom counterpart beyond the simulated readers' agreement in the report's extras.",
            *extra_limits,
        ],
        not_for_clinical_use=True,
        weights_sha256=sha,
        manufacturer=MANUFACTURER,
        reference=REFERENCE,
    )


# --- the harness CLI (`python -m train lge_qa ...`) ----------------------------------------------


def _manifest_arrays(path: Path, split: str, transform: TransformConfig) -> Arrays:
    """One split of a site's manifest: DICOM slices through `slice_to_tensor`, labels from the
    rows' reader VAS columns (`reader<N>_vas`) by the card's rule, else from `label` text."""
    import pydicom

    from train.common.manifest import Manifest

    manifest = Manifest.read(path).split(split)
    if len(manifest) == 0:
        raise ValueError(f"{path}: no rows in split {split!r}")
    xs, ys, vas = [], [], []
    for row in manifest:
        xs.append(slice_to_tensor(pydicom.dcmread(manifest.resolve(row)), None, transform))
        scores = [v for k, v in sorted(row.reader_scores.items()) if k.endswith("_vas")]
        ys.append(L.is_low_certainty(scores) if scores else int(row.label == L.LOW_CERTAINTY))
        vas.append((scores + [float("nan")] * 2)[:2])
    return Arrays(np.stack(xs), np.array(ys, dtype=np.int64), np.array(manifest.patient_ids()),
                  np.array(vas, dtype=np.float64), np.array(["site"] * len(ys)))


def _phantom_split(cfg: DemoConfig) -> tuple[Arrays, dict[str, np.ndarray]]:
    data = cohort_arrays(lge_cohort(cfg.n_patients, cfg.seed, cfg.slices_per_patient, dict(cfg.mix)),
                         cfg.transform)
    splits = patient_split(data.patients, data.y, (0.7, 0.15, 0.15), seed=cfg.seed)
    return data, {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}


def _subset(a: Arrays, i: np.ndarray) -> Arrays:
    return Arrays(a.x[i], a.y[i], a.patients[i], a.vas[i], a.kinds[i])


def task_fit(request: Any) -> Any:
    """FitRequest -> FitResult; also writes `lge_qa.pt` (serving checkpoint) into out_dir."""
    cfg = DemoConfig(seed=request.config.seed)
    torch.set_num_threads(cfg.torch_threads)
    if request.manifest is not None:
        train = _manifest_arrays(request.manifest, "train", cfg.transform)
        val = _manifest_arrays(request.manifest, "val", cfg.transform)
    else:
        data, idx = _phantom_split(cfg)
        train, val = _subset(data, idx["train"]), _subset(data, idx["val"])
    net = EfficientNetV2(cfg.size)
    train_loader = DataLoader(_Augmented(train.x, train.y, True), batch_size=request.batch_size,
                              shuffle=True, generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(_Augmented(val.x, val.y, False), batch_size=64)
    result = fit_classifier(net, train_loader, val_loader, config=request.config,
                            out_dir=request.out_dir, task="binary", val_metric="auc",
                            resume=request.resume)
    threshold = choose_threshold(val.y, predict(net, val.x), cfg.target_precision)
    save_checkpoint(net, _metadata(cfg, threshold, f"0.1.0-fit.seed{cfg.seed}", request.manifest is None),
                    Path(request.out_dir) / "lge_qa.pt")
    return result


def _metadata(cfg: DemoConfig, threshold: float, version: str, phantoms: bool) -> dict[str, Any]:
    return {
        "model_id": "lge_qa", "version": version, "threshold": threshold, "size": cfg.size,
        "spacing_mm": cfg.transform.spacing_mm, "input_size": cfg.transform.size,
        "percentiles": list(cfg.transform.percentiles), "seed": cfg.seed,
        "vas_bounds": [L.VasBounds().low, L.VasBounds().high], "not_for_clinical_use": True,
        "trained_on": "phantoms" if phantoms else "site manifest",
    }


def task_evaluate(request: Any) -> Path:
    """EvaluateRequest -> report folder: a serving checkpoint (`lge_qa.pt`, demo.pt) on one split."""
    from train.common.reports import write_report

    checkpoint = Path(request.checkpoint)
    if checkpoint.is_dir() or checkpoint.name in ("best.pt", "last.pt"):
        checkpoint = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "lge_qa.pt"
    model = build(checkpoint, {})
    cfg = DemoConfig(seed=int(model.metadata.get("seed", DEMO_SEED)), transform=model.config)
    if request.manifest is not None:
        data = _manifest_arrays(request.manifest, request.split, cfg.transform)
    else:
        full, idx = _phantom_split(cfg)
        data = _subset(full, idx[request.split])
    p = served_probabilities(model, data.x)
    write_report(request.out_dir, task="binary", y_true=data.y, y_score=p,
                 class_names=list(L.LABELS), threshold=model.threshold,
                 published=PUBLISHED_FOR_REPORT, title=f"LGE QA, split {request.split}",
                 extra={"checkpoint": str(checkpoint), "version": model.card.version},
                 seed=request.seed)
    return Path(request.out_dir)


def served_probabilities(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(low certainty) through the served model's own probability path (its backend and the
    checkpoint's temperature), not `model.net`: what is evaluated is what is served. `x` holds
    the slices `slice_to_tensor` made, the call `model.prepare` makes."""
    from models.lge_qa.wrapper import LgeQaBatch

    out = []
    for i in range(0, len(x), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
        out.append(model.probabilities(LgeQaBatch(chunk, tuple(ImageRef("", "") for _ in range(len(chunk))))))
    return np.concatenate(out) if out else np.zeros(0)


def task_card(request: Any) -> Path:
    """CardRequest -> card folder (card.md + card.yaml) from an evaluation's metrics.json."""
    from train.common.cards import write_model_card

    model = build(Path(request.checkpoint), {})
    sha = hashlib.sha256(Path(request.checkpoint).read_bytes()).hexdigest()
    write_model_card(
        request.out_dir, model_id="lge_qa", version=model.card.version, name=NAME,
        intended_use=INTENDED_USE, inputs_and_routing="Short-axis PSIR LGE slices (mr.is_lge_psir).",
        labels=L.LABELS, label_rule=L.describe(), training_data=str(model.metadata.get("trained_on", "")),
        metrics=Path(request.evaluation_dir) / "metrics.json", not_for_clinical_use=True,
        weights_sha256=sha, manufacturer=MANUFACTURER, reference=REFERENCE,
    )
    return Path(request.out_dir)


def task_demo_weights(request: Any) -> Path:
    """DemoWeightsRequest -> the rebuilt demo weights (plus report and card)."""
    out = Path(request.out_path) if request.out_path is not None else DEMO_WEIGHTS
    demo_weights(DemoConfig(seed=request.seed), out, Path(request.work_dir) / "evaluate",
                 write_card=out == DEMO_WEIGHTS)
    return out


def task_export(request: Any) -> Any:
    """ExportRequest -> ExportResult: the network forward as ONNX or TorchScript (and a Triton
    repository), refused unless it agrees with the in-process model on phantom slices."""
    from train.common.export import NetworkToExport, export_networks, with_zeros
    from train.phantoms.lge import demo_series

    model = build(Path(request.checkpoint) if request.checkpoint is not None else DEMO_WEIGHTS)
    signature = model.tensor_signature()
    # phantom slices through the serving preprocessing, plus an empty (all-nulled) slice
    x = with_zeros(model.prepare(demo_series(seed=1, n_slices=7)).tensor.numpy())
    return export_networks(request, [NetworkToExport(model.net, signature, {signature.input_name: x})])


def _register() -> None:
    from train.tasks import TaskSpec, register_task

    register_task(TaskSpec(
        name="lge_qa",
        summary="LGE CMR slice certainty (EfficientNetV2): high vs low certainty from reader VAS",
        fit=task_fit, evaluate=task_evaluate, card=task_card, demo_weights=task_demo_weights,
        export=task_export,
        default_config=FitConfig(epochs=DemoConfig.epochs, lr=DemoConfig.lr, patience=4, seed=DEMO_SEED),
    ))


_register()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.lge_qa.task",
                                     description="LGE QA: rebuild demo weights from phantoms.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-weights", help="train on phantoms with a fixed seed, write weights, report, card")
    demo.add_argument("--out", type=Path, default=DEMO_WEIGHTS, help="checkpoint path")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom, split and training seed")
    demo.add_argument("--epochs", type=int, default=DemoConfig.epochs, help="maximum epochs")
    demo.add_argument("--patients", type=int, default=DemoConfig.n_patients, help="phantom patients")
    demo.add_argument("--report-dir", type=Path, default=None, help="evaluation output folder")
    demo.add_argument("--no-card", action="store_true", help="do not rewrite models/lge_qa/card.*")
    demo.add_argument("--init", type=Path, default=None, help="continue from these weights")
    demo.add_argument("--lr", type=float, default=DemoConfig.lr, help="peak learning rate")
    demo.add_argument("--patience", type=int, default=DemoConfig.patience,
                      help="stop after this many epochs without a better validation AUC (0: never)")
    demo.add_argument("--net-size", default=DemoConfig.size, help="EfficientNetV2 size (tiny, b0, s)")
    demo.add_argument("--crop", type=int, default=DEMO_TRANSFORM.size, help="input crop in pixels")
    demo.add_argument("--spacing-mm", type=float, default=DEMO_TRANSFORM.spacing_mm, help="input pixel spacing")
    demo.add_argument("--threads", type=int, default=DemoConfig.torch_threads, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.command == "demo-weights":
        cfg = DemoConfig(seed=args.seed, epochs=args.epochs, n_patients=args.patients, init=args.init,
                         lr=args.lr, patience=args.patience, size=args.net_size, torch_threads=args.threads,
                         transform=TransformConfig(spacing_mm=args.spacing_mm, size=args.crop))
        summary = demo_weights(cfg, args.out, args.report_dir, not args.no_card)
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
