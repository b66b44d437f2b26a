"""Training loops: classifiers, pix2pix generators, heatmap keypoint detectors.

Each loop is a step function (one batch: forward, losses, optimizer steps) and an evaluation
function (metrics on the validation loader) handed to the shared `Trainer` core
(train.common.trainer: seeding, device and AMP, early stopping, schedulers, checkpoints with an
exact resume, tqdm bar, epochs.jsonl). Batches are the dicts `ManifestDataset` yields (`image`,
`label`, `target`, `keypoints`, `visible`) or tuples in that order. Files written to `out_dir`:
`last.pt`, `best.pt`, `epoch_NNN.pt` (when `checkpoint_every` > 0) and `epochs.jsonl`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from torch import nn

from train.common.metrics import ncc
from train.common.trainer import (
    FitConfig,
    FitResult,
    GanConfig,
    KeypointConfig,
    Runtime,
    Trainer,
    load_checkpoint,
    load_weights,
    make_scheduler,
    select_device,
    unpack,
)

__all__ = [
    "FitConfig",
    "FitResult",
    "GanConfig",
    "KeypointConfig",
    "Task",
    "batch_ncc",
    "classifier_loss",
    "classifier_scores",
    "decode_heatmaps",
    "fit_classifier",
    "fit_gan",
    "fit_keypoints",
    "gaussian_heatmaps",
    "load_checkpoint",
    "load_weights",
    "predict_scores",
]

Task = Literal["binary", "multiclass", "ordinal"]


# --- classifiers -----------------------------------------------------------------------------


def classifier_loss(logits: torch.Tensor, y: torch.Tensor, task: Task,
                    class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary: one logit (BCE) or two (CE); multiclass: CE; ordinal: K-1 cumulative logits."""
    w = class_weights.to(logits.device) if class_weights is not None else None
    if task == "multiclass" or (task == "binary" and logits.ndim == 2 and logits.shape[1] == 2):
        return F.cross_entropy(logits.float(), y.long(), weight=w)
    if task == "binary":
        sample_w = w[y.long()] if w is not None else None
        return F.binary_cross_entropy_with_logits(
            logits.reshape(-1).float(), y.float().reshape(-1), weight=sample_w)
    if task == "ordinal":
        ranks = torch.arange(logits.shape[1], device=logits.device)
        cumulative = (y.long().reshape(-1, 1) > ranks).float()
        per_item = F.binary_cross_entropy_with_logits(
            logits.float(), cumulative, reduction="none").mean(dim=1)
        if w is not None:
            return (per_item * w[y.long()]).sum() / w[y.long()].sum()
        return per_item.mean()
    raise ValueError(f"task must be binary, multiclass or ordinal, got {task!r}")


def classifier_scores(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Binary: P(positive) per item (N,); multiclass and ordinal: class probabilities (N, K)."""
    logits = logits.float()
    if task == "binary":
        if logits.ndim == 2 and logits.shape[1] == 2:
            return logits.softmax(dim=1)[:, 1]
        return torch.sigmoid(logits.reshape(-1))
    if task == "multiclass":
        return logits.softmax(dim=1)
    greater = torch.sigmoid(logits)  # P(y > k), k = 0..K-2
    ones = torch.ones_like(greater[:, :1])
    zeros = torch.zeros_like(greater[:, :1])
    probs = (torch.cat([ones, greater], 1) - torch.cat([greater, zeros], 1)).clamp_min(0)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC, or macro one-vs-rest over the classes present on both sides; NaN if none."""
    if scores.ndim == 1:
        return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else math.nan
    aucs = [roc_auc_score(y == k, scores[:, k]) for k in range(scores.shape[1])
            if 0 < int((y == k).sum()) < len(y)]
    return float(np.mean(aucs)) if aucs else math.nan


def predict_scores(model: nn.Module, loader: Iterable[Any], *, task: Task = "binary",
                   device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over `loader`: (labels (N,), scores (N,) for binary or (N, K))."""
    dev = device if isinstance(device, torch.device) else select_device(device)
    model.to(dev).eval()
    ys, ss = [], []
    with torch.no_grad():
        for batch in loader:
            x, y = unpack(batch, "image", "label")
            ss.append(classifier_scores(model(x.to(dev)), task).cpu().numpy())
            ys.append(np.asarray(y).reshape(-1))
    return np.concatenate(ys), np.concatenate(ss)


def fit_classifier(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    config: FitConfig,
    out_dir: str | os.PathLike[str],
    task: Task = "binary",
    class_weights: torch.Tensor | None = None,
    val_metric: Literal["auc", "accuracy", "kappa", "loss"] = "auc",
    resume: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Train a classifier with AdamW, stop early on `val_metric` (kappa: quadratic weighted)."""
    if val_metric not in ("auc", "accuracy", "kappa", "loss"):
        raise ValueError(f"val_metric must be auc, accuracy, kappa or loss, got {val_metric!r}")
    mode: Literal["max", "min"] = "min" if val_metric == "loss" else "max"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)

    def step(batch: Any, rt: Runtime) -> dict[str, float]:
        x, y = (rt.to_device(v) for v in unpack(batch, "image", "label"))
        optimizer.zero_grad(set_to_none=True)
        with rt.autocast():
            logits = model(x)
        loss = classifier_loss(logits, y, task, class_weights)
        rt.optimize(loss, optimizer)
        return {"loss": loss.item()}

    def evaluate(loader: Iterable[Any], rt: Runtime) -> dict[str, float]:
        ys, ss, loss_sum, n = [], [], 0.0, 0
        for batch in loader:
            x, y = (rt.to_device(v) for v in unpack(batch, "image", "label"))
            with rt.autocast():
                logits = model(x)
            loss_sum += classifier_loss(logits, y, task, class_weights).item() * len(y)
            n += len(y)
            ss.append(classifier_scores(logits, task).cpu().numpy())
            ys.append(y.cpu().numpy().reshape(-1))
        y_true, scores = np.concatenate(ys).astype(int), np.concatenate(ss)
        pred = (scores >= 0.5).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        kappa = (cohen_kappa_score(y_true, pred, weights="quadratic")
                 if len(np.unique(np.concatenate([y_true, pred]))) > 1 else math.nan)
        return {"loss": loss_sum / max(n, 1), "auc": _auc(y_true, scores),
                "accuracy": float((pred == y_true).mean()), "kappa": float(kappa)}

    sched = make_scheduler(optimizer, config, mode)
    return Trainer(
        modules={"model": model}, optimizers={"model": optimizer}, step=step, evaluate=evaluate,
        train_loader=train_loader, val_loader=val_loader, config=config, out_dir=Path(out_dir),
        monitor=val_metric, mode=mode, resume=Path(resume) if resume else None,
        schedulers={"model": sched} if sched is not None else {},
    ).run()


# --- image-to-image GAN (pix2pix) ------------------------------------------------------------


def batch_ncc(fake: torch.Tensor, real: torch.Tensor) -> list[float]:
    """Zero-mean NCC (train.common.metrics.ncc) of each generated image with its target."""
    f, r = fake.detach().float().cpu().numpy(), real.detach().float().cpu().numpy()
    return [ncc(f[i], r[i]) for i in range(len(f))]


def _adversarial(logits: Any, real: bool, kind: str) -> torch.Tensor:
    outputs = logits if isinstance(logits, list | tuple) else [logits]
    total = torch.zeros((), device=outputs[0].device)
    for out in outputs:
        out = out.float()
        target = torch.ones_like(out) if real else torch.zeros_like(out)
        if kind == "lsgan":
            total = total + F.mse_loss(out, target)
        else:
            total = total + F.binary_cross_entropy_with_logits(out, target)
    return total


def fit_gan(
    generator: nn.Module,
    discriminators: Mapping[str, nn.Module],
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    config: GanConfig,
    out_dir: str | os.PathLike[str],
    resume: str | os.PathLike[str] | None = None,
) -> FitResult:
    """pix2pix: each discriminator D_k learns real (source, target) from (source, G(source));
    G minimises sum_k adversarial + l1_lambda * L1. Batches: `image` (source), `target`.
    Early stopping on validation NCC (higher is better); val L1 is logged too.
    """
    if not discriminators:
        raise ValueError("fit_gan needs at least one discriminator")
    kind = config.adversarial

    def adam(module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=config.lr, betas=config.betas,
                                weight_decay=config.weight_decay)

    opt_g = adam(generator)
    opt_d = {k: adam(d) for k, d in discriminators.items()}

    def d_input(src: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        return torch.cat([src, img], dim=1) if config.conditional else img

    def step(batch: Any, rt: Runtime) -> dict[str, float]:
        src, tgt = (rt.to_device(v) for v in unpack(batch, "image", "target"))
        with rt.autocast():
            fake = generator(src)
        d_total = 0.0
        for name, disc in discriminators.items():
            opt_d[name].zero_grad(set_to_none=True)
            with rt.autocast():
                real_logits = disc(d_input(src, tgt))
                fake_logits = disc(d_input(src, fake.detach()))
            loss_d = 0.5 * (_adversarial(real_logits, True, kind)
                            + _adversarial(fake_logits, False, kind))
            rt.optimize(loss_d, opt_d[name])
            d_total += loss_d.item()
        opt_g.zero_grad(set_to_none=True)
        with rt.autocast():
            adv = sum((_adversarial(d(d_input(src, fake)), True, kind)
                       for d in discriminators.values()), torch.zeros((), device=rt.device))
        l1 = F.l1_loss(fake.float(), tgt.float())
        loss_g = adv + config.l1_lambda * l1
        rt.optimize(loss_g, opt_g)
        return {"loss": loss_g.item(), "g_adv": float(adv.item()), "g_l1": l1.item(),
                "d": d_total / len(discriminators)}

    def evaluate(loader: Iterable[Any], rt: Runtime) -> dict[str, float]:
        nccs, l1_sum, n = [], 0.0, 0
        for batch in loader:
            src, tgt = (rt.to_device(v) for v in unpack(batch, "image", "target"))
            with rt.autocast():
                fake = generator(src).float()
            nccs.extend(batch_ncc(fake, tgt))
            l1_sum += F.l1_loss(fake, tgt.float(), reduction="sum").item() / fake[0].numel()
            n += len(src)
        finite = [v for v in nccs if math.isfinite(v)]  # NaN: a constant image
        return {"ncc": float(np.mean(finite)) if finite else math.nan, "l1": l1_sum / max(n, 1)}

    modules: dict[str, nn.Module] = {"generator": generator}
    modules.update({f"discriminator_{k}": d for k, d in discriminators.items()})
    optimizers = {"generator": opt_g, **{f"discriminator_{k}": o for k, o in opt_d.items()}}
    schedulers = {k: s for k, o in optimizers.items()
                  if (s := make_scheduler(o, config, "max")) is not None}
    return Trainer(
        modules=modules, optimizers=optimizers, step=step, evaluate=evaluate,
        train_loader=train_loader, val_loader=val_loader, config=config, out_dir=Path(out_dir),
        monitor="ncc", mode="max", resume=Path(resume) if resume else None, schedulers=schedulers,
    ).run()


# --- keypoints (heatmap regression) ----------------------------------------------------------


def gaussian_heatmaps(keypoints: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                      sigma_px: float) -> torch.Tensor:
    """Targets (N, K, h, w): a Gaussian of `sigma_px` at each keypoint (x=column, y=row) given in
    input pixels and mapped to the heatmap by `scale` = (w / W, h / H)."""
    h, w = size
    xs = torch.arange(w, device=keypoints.device, dtype=torch.float32)
    ys = torch.arange(h, device=keypoints.device, dtype=torch.float32)
    kx = keypoints[..., 0].float() * scale[0]
    ky = keypoints[..., 1].float() * scale[1]
    dx2 = (xs.view(1, 1, 1, w) - kx[..., None, None]) ** 2
    dy2 = (ys.view(1, 1, h, 1) - ky[..., None, None]) ** 2
    return torch.exp(-(dx2 + dy2) / (2 * sigma_px**2))


def decode_heatmaps(heatmaps: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Arg-max location of each heatmap, (N, K, 2) as (x, y) in input pixels."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w).argmax(dim=2)
    xs = (flat % w).float() / scale[0]
    ys = torch.div(flat, w, rounding_mode="floor").float() / scale[1]
    return torch.stack([xs, ys], dim=2)


def _heatmap_loss(out: torch.Tensor, target: torch.Tensor, visible: torch.Tensor,
                  kind: str) -> torch.Tensor:
    mask = visible.float()[..., None, None].expand_as(target)
    if kind == "mse":
        return ((out.float() - target) ** 2 * mask).sum() / mask.sum().clamp_min(1)
    # Penalty-reduced focal loss on sigmoid heatmaps (CenterNet, Zhou et al. 2019).
    p = torch.sigmoid(out.float()).clamp(1e-4, 1 - 1e-4)
    peak = target.flatten(2).amax(dim=2)[..., None, None]
    pos = (target >= peak - 1e-6).float() * mask
    neg = (1 - pos) * mask
    loss = -(pos * (1 - p) ** 2 * torch.log(p) + neg * (1 - target) ** 4 * p**2 * torch.log(1 - p))
    return loss.sum() / pos.sum().clamp_min(1)


def fit_keypoints(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    config: KeypointConfig,
    out_dir: str | os.PathLike[str],
    val_metric: Literal["mean_distance", "pck"] = "mean_distance",
    resume: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Heatmap regression. Batches: `image` (N, C, H, W), `keypoints` (N, K, 2) as (x, y) input
    pixels, optional `visible` (N, K). The model returns (N, K, h, w) heatmaps (logits for focal).
    Validation: mean distance in input pixels over visible points, PCK at pck_threshold_px.
    """
    if val_metric not in ("mean_distance", "pck"):
        raise ValueError(f"val_metric must be mean_distance or pck, got {val_metric!r}")
    mode: Literal["max", "min"] = "min" if val_metric == "mean_distance" else "max"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)

    def forward(batch: Any, rt: Runtime) -> tuple[torch.Tensor, ...]:
        x, kp, vis = (rt.to_device(v) for v in unpack(batch, "image", "keypoints", "visible"))
        if vis is None:
            vis = torch.ones(kp.shape[:2], device=rt.device)
        with rt.autocast():
            out = model(x)
        scale = (out.shape[-1] / x.shape[-1], out.shape[-2] / x.shape[-2])
        target = gaussian_heatmaps(kp, (out.shape[-2], out.shape[-1]), scale, config.sigma_px)
        loss = _heatmap_loss(out, target, vis, config.heatmap_loss)
        return loss, out, kp, vis, torch.tensor(scale)

    def step(batch: Any, rt: Runtime) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        loss = forward(batch, rt)[0]
        rt.optimize(loss, optimizer)
        return {"loss": loss.item()}

    def evaluate(loader: Iterable[Any], rt: Runtime) -> dict[str, float]:
        dists, loss_sum, n = [], 0.0, 0
        for batch in loader:
            loss, out, kp, vis, scale = forward(batch, rt)
            pred = decode_heatmaps(out.float(), (float(scale[0]), float(scale[1])))
            d = torch.linalg.norm(pred - kp.float(), dim=2)
            dists.append(d[vis.bool()].cpu().numpy())
            loss_sum += loss.item() * len(kp)
            n += len(kp)
        all_d = np.concatenate(dists) if dists else np.zeros(0)
        mean_d = float(all_d.mean()) if all_d.size else math.nan
        pck = float((all_d <= config.pck_threshold_px).mean()) if all_d.size else math.nan
        return {"loss": loss_sum / max(n, 1), "mean_distance": mean_d, "pck": pck}

    sched = make_scheduler(optimizer, config, mode)
    return Trainer(
        modules={"model": model}, optimizers={"model": optimizer}, step=step, evaluate=evaluate,
        train_loader=train_loader, val_loader=val_loader, config=config, out_dir=Path(out_dir),
        monitor=val_metric, mode=mode, resume=Path(resume) if resume else None,
        schedulers={"model": sched} if sched is not None else {},
    ).run()
