"""Train, evaluate and document the hand-joints model (`models/hand_joints`) on phantoms or a
site's annotated radiographs.

    python -m train hand_joints demo-weights      # rebuild models/hand_joints/weights/demo.pt
    python -m train hand_joints fit --out DIR     # both networks; DIR/bundle.pt is servable
    python -m train hand_joints evaluate --checkpoint DIR/bundle.pt --out REPORT
    python -m train hand_joints fit --manifest M.csv --out DIR   # M.joints.csv beside M.csv
    python -m train hand_joints evaluate --manifest M.csv --split test --checkpoint DIR/bundle.pt
    python -m train hand_joints card --evaluation REPORT --checkpoint DIR/bundle.pt --out CARD

Recipe: a seeded cohort from `train.phantoms.hand` (one radiograph per fake patient, RA and OA,
single and both hands, CR/DX, MONOCHROME1/2), a 70/15/15 patient-level split stratified by
disease, every image read through `models.hand_joints.transforms` exactly as in service.

1. Detector: integral regression on the shared `Trainer` core (soft-argmax L1 plus the
   cross-entropy to a Gaussian of 1.5 grid pixels = 3 mm, AdamW, cosine, early stopping on
   validation mean keypoint distance). The harness's `fit_keypoints` (per-pixel MSE/focal
   heatmaps) was tried first and did not move in the few hundred CPU steps the demo affords.
2. Grader: crops cut around the *truth* joints with jitter that mimics the detector's error
   (position, axis, scale), labels SHS for RA hands and KL for OA hands, the other head masked;
   the shared `Trainer` core with a masked two-head cross-entropy, early stopping on
   validation loss.
3. Evaluation, as the study reports it, end to end through the serving code
   (`HandJointsModel.analyse` on detected joints): PR-AUC per class healthy / mild / severe and
   over all joints (micro-average), RA (SHS) and OA (KL) separately; detection AP at IoU 0.5
   per joint and mAP; per-joint recall; confusion per grade and per class.

A site's own radiographs: `fit --manifest M.csv` trains on its train/val splits and `evaluate
--manifest M.csv --split S` reports on split S, the joints read from a companion CSV
(`M.joints.csv` beside the manifest, or each row's `label_joints_csv`); the format is in
`train.hand_joints.annotations`. Images go through the same serving transforms and keypoints
into the same canonical frame as the phantoms'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset as TorchDataset

from models.hand_joints import joints as J, transforms as T
from models.hand_joints.net import DetectorConfig, JointGrader, build_detector, count_parameters
from models.hand_joints.wrapper import build, spatial_softmax
from train.common.loops import gaussian_heatmaps
from train.common.seeding import seed_everything, torch_generator
from train.common.splits import split_indices
from train.common.trainer import FitConfig, FitResult, Runtime, Trainer, make_scheduler
from train.common.weights import save_serving_checkpoint, serving_state, sha256_of
from train.hand_joints.annotations import AnnotatedImage, from_phantom, read_annotated_manifest, split_of
from train.hand_joints.evaluation import evaluate_model, write_card
from train.hand_joints.export import task_export
from train.phantoms.hand import HandImage, hand_cohort
from train.tasks import CardRequest, DemoWeightsRequest, EvaluateRequest, FitRequest, TaskSpec, register_task

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "hand_joints"
DEMO_WEIGHTS = MODEL_DIR / "weights" / "demo.pt"
DEMO_SEED = 0


@dataclass(frozen=True)
class HandConfig:
    """What one fit trains on and for how long (demo-weights: a few CPU minutes)."""

    seed: int = DEMO_SEED
    n_images: int = 240
    detector_epochs: int = 30
    grader_epochs: int = 10
    batch_size: int = 8
    lr: float = 3e-3
    torch_threads: int = 1


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One canonical hand with its truth in canonical pixel coordinates and its grades."""

    image: int  # index into the image list
    hand: T.Hand
    points: np.ndarray  # (K, 2) canonical (col, row)
    shs: Mapping[str, int]  # SHS narrowing grade per scored joint
    kl: Mapping[str, int]  # KL grade per scored joint


def to_canonical(hand: T.Hand, points_src: np.ndarray) -> np.ndarray:
    """Inverse of `Hand.to_source`."""
    pts = np.array(points_src, dtype=np.float64, copy=True)
    pts[..., 0] -= hand.col0
    if hand.mirrored:
        pts[..., 0] = (hand.pixels.shape[1] - 1) - pts[..., 0]
    return pts


def phantom_images(cohort: list[HandImage], indices: np.ndarray) -> list[AnnotatedImage]:
    """The chosen phantoms as annotated images (the same truth a site's joints CSV carries)."""
    return [from_phantom(cohort[int(i)], f"phantom {int(i)}") for i in indices]


def samples_of(images: Sequence[AnnotatedImage]) -> list[Sample]:
    """Canonical hands of the images, read through the serving transforms, keypoints mapped
    into each canonical hand (mirroring, split offset) with the same geometry."""
    out = []
    for i, img in enumerate(images):
        for hand, truth in img.canonical_hands(img.load()):
            src = np.array([truth.keypoints[n] for n in J.JOINTS])
            out.append(Sample(i, hand, to_canonical(hand, src), dict(truth.shs), dict(truth.kl)))
    return out


class _Keypoints(TorchDataset[dict[str, torch.Tensor]]):
    """Detector inputs and keypoints in grid pixels; gain/gamma jitter when training."""

    def __init__(self, samples: list[Sample], augment: bool, seed: int) -> None:
        self.x, self.kp = [], []
        for s in samples:
            grid, gm = T.detector_grid(s.hand)
            self.x.append(torch.from_numpy(grid))
            self.kp.append(torch.from_numpy(gm.to_grid(s.points)).float())
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            r = torch.rand(2)
            img = img.clamp(0, 1) ** (0.7 + 0.6 * r[0]) * (0.85 + 0.3 * r[1])
        return {"image": img, "keypoints": self.kp[i], "visible": torch.ones(len(J.JOINTS))}


def grader_arrays(samples: list[Sample], seed: int, jitter: bool = True) -> dict[str, np.ndarray]:
    """Crops of the graded joints around truth keypoints (jittered like a detector would be);
    a grade absent in one scheme is -1 (that head masked)."""
    g = np.random.default_rng(seed)
    crops, joint, shs, kl = [], [], [], []
    for s in samples:
        geometry = J.geometry_from_keypoints(s.points)
        for k, name in enumerate(J.JOINTS):
            if name not in s.shs and name not in s.kl:
                continue
            geo = geometry[k]
            if jitter:
                w = geo.width_px
                t = np.radians(g.normal(0, 6.0))
                ax, ay = geo.axis
                geo = J.JointGeometry(
                    (geo.center[0] + g.normal(0, 0.08 * w), geo.center[1] + g.normal(0, 0.08 * w)),
                    (ax * np.cos(t) - ay * np.sin(t), ax * np.sin(t) + ay * np.cos(t)), w)
            crops.append(T.joint_crop(s.hand.pixels, geo, name, scale_jitter=float(g.uniform(0.9, 1.1)) if jitter else 1.0))
            joint.append(k)
            shs.append(s.shs.get(name, -1))
            kl.append(s.kl.get(name, -1))
    if not crops:
        raise ValueError("no graded joints to train the grader on (shs_jsn and kl all blank)")
    return {"x": np.stack(crops), "joint": np.array(joint), "shs": np.array(shs), "kl": np.array(kl)}


class _Crops(TorchDataset[tuple[torch.Tensor, ...]]):
    def __init__(self, arrays: dict[str, np.ndarray], augment: bool) -> None:
        self.a = {k: torch.from_numpy(v) for k, v in arrays.items()}
        self.augment = augment

    def __len__(self) -> int:
        return len(self.a["joint"])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x = self.a["x"][i]
        if self.augment:
            x = x * (0.9 + 0.2 * torch.rand(1)) + 0.05 * torch.randn(1)
        return x, self.a["joint"][i], self.a["shs"][i], self.a["kl"][i]


def _detector_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], rt: Runtime,
                   sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-argmax L1 (grid pixels) + cross-entropy to a normalised Gaussian target; and the
    per-keypoint distance of the soft-argmax (for validation)."""
    x, kp = rt.to_device(batch["image"]), rt.to_device(batch["keypoints"])
    prob = spatial_softmax(net(x).float())
    _n, _k, h, w = prob.shape
    xs = torch.arange(w, device=x.device, dtype=torch.float32)
    ys = torch.arange(h, device=x.device, dtype=torch.float32)
    ex = (prob.sum(2) * xs).sum(2)
    ey = (prob.sum(3) * ys).sum(2)
    dist = torch.sqrt((ex - kp[..., 0]) ** 2 + (ey - kp[..., 1]) ** 2 + 1e-6)
    target = gaussian_heatmaps(kp, (h, w), (1.0, 1.0), sigma)
    target = target / target.flatten(2).sum(2).clamp_min(1e-6)[..., None, None]
    ce = -(target * torch.log(prob.clamp_min(1e-12))).flatten(2).sum(2)
    return (torch.abs(ex - kp[..., 0]) + torch.abs(ey - kp[..., 1])).mean() + 0.1 * ce.mean(), dist


def fit_detector(net: torch.nn.Module, train: list[Sample], val: list[Sample], config: FitConfig,
                 out_dir: Path, batch_size: int = 8) -> FitResult:
    """The keypoint UNet on the shared Trainer; early stop on validation mean distance."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_loader = DataLoader(_Keypoints(train, True, config.seed), batch_size=batch_size, shuffle=True,
                              generator=torch_generator(config.seed))
    val_loader = DataLoader(_Keypoints(val, False, config.seed), batch_size=16)

    def step(batch: Any, rt: Runtime) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        loss, dist = _detector_loss(net, batch, rt)
        rt.optimize(loss, optimizer)
        return {"loss": loss.item(), "distance": float(dist.detach().mean())}

    def evaluate(loader: Any, rt: Runtime) -> dict[str, float]:
        dists, total, n = [], 0.0, 0
        for batch in loader:
            loss, dist = _detector_loss(net, batch, rt)
            total += loss.item() * len(dist)
            n += len(dist)
            dists.append(dist.detach().cpu().numpy().ravel())
        d = np.concatenate(dists)
        return {"loss": total / max(n, 1), "mean_distance": float(d.mean()), "pck": float((d <= 2.5).mean())}

    sched = make_scheduler(optimizer, config, "min")
    return Trainer(modules={"model": net}, optimizers={"model": optimizer}, step=step, evaluate=evaluate,
                   train_loader=train_loader, val_loader=val_loader, config=config, out_dir=out_dir,
                   monitor="mean_distance", mode="min",
                   schedulers={"model": sched} if sched is not None else {}).run()


def _grader_loss(net: JointGrader, batch: tuple[torch.Tensor, ...], rt: Runtime) -> torch.Tensor:
    x, joint, shs, kl = (rt.to_device(v) for v in batch)
    out_shs, out_kl = net(x, joint)
    loss = torch.zeros((), device=x.device)
    if bool((shs >= 0).any()):
        loss = loss + F.cross_entropy(out_shs[shs >= 0], shs[shs >= 0].long())
    if bool((kl >= 0).any()):
        loss = loss + F.cross_entropy(out_kl[kl >= 0], kl[kl >= 0].long())
    return loss


def fit_grader(net: JointGrader, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
               config: FitConfig, out_dir: Path, batch_size: int = 64) -> FitResult:
    """The two-head grader on the shared Trainer (masked cross-entropy, early stop on val loss)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_loader = DataLoader(_Crops(train, True), batch_size=batch_size, shuffle=True,
                              generator=torch_generator(config.seed))
    val_loader = DataLoader(_Crops(val, False), batch_size=256)

    def step(batch: Any, rt: Runtime) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        loss = _grader_loss(net, batch, rt)
        rt.optimize(loss, optimizer)
        return {"loss": loss.item()}

    def evaluate(loader: Any, rt: Runtime) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in loader:
            total += _grader_loss(net, batch, rt).item() * len(batch[0])
            n += len(batch[0])
        return {"loss": total / max(n, 1)}

    sched = make_scheduler(optimizer, config, "min")
    return Trainer(modules={"model": net}, optimizers={"model": optimizer}, step=step, evaluate=evaluate,
                   train_loader=train_loader, val_loader=val_loader, config=config, out_dir=out_dir,
                   monitor="loss", mode="min", schedulers={"model": sched} if sched is not None else {}).run()


# --- fit -------------------------------------------------------------------------------------


def split_cohort(cohort: list[HandImage], seed: int) -> dict[str, np.ndarray]:
    """70/15/15 by patient, stratified by disease."""
    patients = np.array([c.patient_id for c in cohort])
    labels = np.array([c.hands[0].disease for c in cohort])
    return split_indices(patients, labels, (0.7, 0.15, 0.15), seed)


def save_bundle(detector: torch.nn.Module, grader: JointGrader, metadata: dict[str, Any], path: Path) -> str:
    """Write detector + grader + metadata (loadable with weights_only=True); return its SHA-256."""
    return save_serving_checkpoint(
        {"detector": serving_state(detector), "grader": serving_state(grader), "metadata": metadata}, path)


def train_all(cfg: HandConfig, out_dir: Path, bundle: Path) -> dict[str, Any]:
    """Phantoms -> detector -> grader -> bundle; returns what happened (for logs and the card)."""
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    cohort = hand_cohort(cfg.n_images, cfg.seed)
    idx = split_cohort(cohort, cfg.seed)
    train_s = samples_of(phantom_images(cohort, idx["train"]))
    val_s = samples_of(phantom_images(cohort, idx["val"]))
    print(f"cohort: {len(cohort)} images, train {len(train_s)} / val {len(val_s)} hands; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    out = train_networks(cfg, train_s, val_s, out_dir, bundle, t0, {
        "version": f"0.1.0-demo.phantom.seed{cfg.seed}", "n_images": cfg.n_images,
        "trained_on": f"phantoms: {cfg.n_images} radiographs (train.phantoms.hand), seed {cfg.seed}"})
    return {**out, "cohort": cohort, "split": idx}


def train_manifest(cfg: HandConfig, manifest: Path, out_dir: Path, bundle: Path) -> dict[str, Any]:
    """A site's annotated radiographs (manifest train/val splits + joints CSV, see
    `train.hand_joints.annotations`) -> detector -> grader -> bundle."""
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    images, unannotated = read_annotated_manifest(manifest)
    train_i, val_i = split_of(images, "train", manifest), split_of(images, "val", manifest)
    train_s, val_s = samples_of(train_i), samples_of(val_i)
    for name, samples in (("train", train_s), ("val", val_s)):
        if not samples:
            raise ValueError(f"{manifest}: split {name!r}: no annotated hand matches its image's side")
    print(f"manifest: train {len(train_i)} / val {len(val_i)} images ({len(train_s)} / {len(val_s)} hands), "
          f"{unannotated} rows without joints left out; {time.perf_counter() - t0:.0f} s", flush=True)
    return train_networks(cfg, train_s, val_s, out_dir, bundle, t0, {
        "version": f"0.1.0-site.seed{cfg.seed}", "n_images": len(train_i) + len(val_i),
        "manifest": manifest.name,
        "trained_on": f"manifest {manifest.name}: {len(train_i)} train / {len(val_i)} val radiographs"})


def train_networks(cfg: HandConfig, train_s: list[Sample], val_s: list[Sample], out_dir: Path, bundle: Path,
                   t0: float, about: Mapping[str, Any]) -> dict[str, Any]:
    """Detector, then grader, then the bundle (its metadata completed with `about`)."""
    det_cfg = DetectorConfig()
    detector = build_detector(det_cfg)
    dcfg = FitConfig(epochs=cfg.detector_epochs, lr=cfg.lr, seed=cfg.seed, patience=6, progress=False)
    det_result = fit_detector(detector, train_s, val_s, dcfg, out_dir / "detector", cfg.batch_size)
    print(f"detector: val mean distance {det_result.best_metric:.2f} grid px at epoch "
          f"{det_result.best_epoch}; {time.perf_counter() - t0:.0f} s", flush=True)
    grader = JointGrader()
    gcfg = FitConfig(epochs=cfg.grader_epochs, lr=cfg.lr, seed=cfg.seed, patience=4, progress=False)
    g_result = fit_grader(grader, grader_arrays(train_s, cfg.seed), grader_arrays(val_s, cfg.seed + 1),
                          gcfg, out_dir / "grader")
    print(f"grader: val loss {g_result.best_metric:.3f} at epoch {g_result.best_epoch}; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    metadata: dict[str, Any] = {
        "model_id": "hand_joints", "version": about["version"],
        "channels": list(det_cfg.channels), "strides": list(det_cfg.strides),
        "num_res_units": det_cfg.num_res_units, "grader_width": 16, "grid": T.GRID,
        "grid_mm": T.GRID_MM, "crop": T.CROP, "seed": cfg.seed, "n_images": about["n_images"],
        "not_for_clinical_use": True, **{k: v for k, v in about.items() if k not in ("version", "n_images")},
    }
    sha = save_bundle(detector.eval(), grader.eval(), metadata, bundle)
    return {"detector": det_result, "grader": g_result, "sha256": sha, "metadata": metadata,
            "parameters": count_parameters(detector) + count_parameters(grader),
            "seconds": round(time.perf_counter() - t0, 1)}


# --- the CLI task ----------------------------------------------------------------------------


def _config(request_config: FitConfig) -> HandConfig:
    return HandConfig(seed=request_config.seed, detector_epochs=request_config.epochs,
                      grader_epochs=max(4, request_config.epochs - 4), lr=request_config.lr)


def fit(request: FitRequest) -> FitResult:
    """Train both networks on a manifest's train/val splits with its joints CSV
    (`train.hand_joints.annotations`), or on seeded phantoms; DIR/bundle.pt is servable."""
    bundle = request.out_dir / "bundle.pt"
    if request.manifest is not None:
        out = train_manifest(_config(request.config), request.manifest, request.out_dir, bundle)
    else:
        out = train_all(_config(request.config), request.out_dir, bundle)
    return replace(out["detector"], best_checkpoint=request.out_dir / "bundle.pt")


def _bundle(path: Path) -> Path:
    return path.parent / "bundle.pt" if path.name in ("best.pt", "last.pt") else path


def evaluate(request: EvaluateRequest) -> Path:
    """Evaluate a bundle on one split of a manifest with its joints CSV, or (no manifest) of
    the phantom cohort its metadata names."""
    bundle = _bundle(request.checkpoint)
    model = build(bundle, {})
    if request.manifest is not None:
        images, _ = read_annotated_manifest(request.manifest)
        chosen = split_of(images, request.split, request.manifest)
        evaluate_model(model, chosen, request.out_dir, request.seed,
                       source=f"{request.split} split of {request.manifest.name}")
        return request.out_dir
    meta = model.metadata
    cohort = hand_cohort(int(meta.get("n_images", HandConfig.n_images)), int(meta.get("seed", 0)))
    idx = split_cohort(cohort, int(meta.get("seed", 0)))
    evaluate_model(model, phantom_images(cohort, idx[request.split]), request.out_dir, request.seed)
    return request.out_dir


def card(request: CardRequest) -> Path:
    bundle = _bundle(request.checkpoint)
    model = build(bundle, {})
    sha = sha256_of(bundle)
    n_params = count_parameters(model.detector) + count_parameters(model.grader)
    write_card(request.evaluation_dir / "metrics.json", sha, model.card.version, request.out_dir,
               int(model.metadata.get("seed", 0)), int(model.metadata.get("n_images", HandConfig.n_images)),
               n_params)
    return request.out_dir


def demo_weights(request: DemoWeightsRequest) -> Path:
    """Rebuild models/hand_joints/weights/demo.pt (or --out), evaluate it, rewrite the card."""
    cfg = HandConfig(seed=request.seed)
    out = request.out_path or DEMO_WEIGHTS
    work = request.work_dir
    result = train_all(cfg, work, out)
    model = build(out, {"torch_threads": 2})
    evaluation = evaluate_model(model, phantom_images(result["cohort"], result["split"]["test"]),
                                work / "evaluate", cfg.seed)
    if request.out_path is None:
        write_card(evaluation, result["sha256"], result["metadata"]["version"], MODEL_DIR, cfg.seed,
                   cfg.n_images, result["parameters"])
    print(json.dumps({"weights": str(out), "sha256": result["sha256"], "bytes": out.stat().st_size,
                      "seconds": result["seconds"],
                      "summary": {k: v["value"] for k, v in evaluation["summary"].items()},
                      "latency_ms_mean": evaluation["details"]["latency_ms_mean"]}, indent=2), flush=True)
    return out


TASK = register_task(TaskSpec(
    name="hand_joints",
    summary="hand radiographs: joint keypoints + boxes, SHS narrowing and KL grades (phantoms)",
    fit=fit, evaluate=evaluate, card=card, demo_weights=demo_weights, export=task_export,
    default_config=FitConfig(epochs=30, lr=3e-3, patience=6),
))
