"""The training core every loop shares: configs, the epoch loop, checkpoints and resume.

`Trainer` owns seeding, device and AMP (CUDA only), the epoch loop with a tqdm bar, early
stopping on a validation metric, schedulers, checkpoints (modules, optimizers, schedulers, AMP
scaler, RNG states, epoch, best metric, config, git commit) with an exact resume, and
`epochs.jsonl` (one JSON object per epoch). A loop (train.common.loops) supplies only a step
function (one batch: forward, losses, optimizer steps) and an evaluation function.

Checkpoints hold tensors and plain types only, so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from train.common.seeding import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class FitConfig:
    """Everything that shapes a run; stored in every checkpoint. Defaults suit a classifier."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    plateau_factor: float = 0.5  # ReduceLROnPlateau: lr *= factor ...
    plateau_patience: int = 2  # ... after this many epochs without improvement
    patience: int = 5  # early stopping: epochs without improvement; 0 never stops early
    min_delta: float = 0.0  # smallest change of the validation metric that counts
    seed: int = 0
    deterministic: bool = True
    device: str | None = None  # None: "cuda" when available, else "cpu"
    amp: bool = True  # mixed precision; only ever used on CUDA
    grad_clip_norm: float | None = None
    max_steps_per_epoch: int | None = None
    checkpoint_every: int = 0  # also keep epoch_NNN.pt every N epochs; 0 keeps only last/best
    restore_best: bool = True  # load best.pt weights into the model(s) when fitting ends
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.scheduler not in ("cosine", "plateau", "none"):
            raise ValueError(f"scheduler must be cosine, plateau or none, got {self.scheduler!r}")
        if self.patience < 0 or self.checkpoint_every < 0:
            raise ValueError("patience and checkpoint_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for checkpoints, logs and reports."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class GanConfig(FitConfig):
    """pix2pix defaults (Isola et al. 2017): Adam 2e-4, betas (0.5, 0.999), lambda_L1 100."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.5, 0.999)
    scheduler: Literal["cosine", "plateau", "none"] = "none"
    adversarial: Literal["bce", "lsgan"] = "bce"
    l1_lambda: float = 100.0
    conditional: bool = True  # discriminators see (source, image) stacked on channels


@dataclass(frozen=True)
class KeypointConfig(FitConfig):
    """Heatmap regression: Gaussian targets of `sigma_px` (heatmap pixels), MSE or focal loss."""

    heatmap_loss: Literal["mse", "focal"] = "mse"
    sigma_px: float = 2.0
    pck_threshold_px: float = 5.0  # PCK radius, in input-image pixels


@dataclass(frozen=True)
class FitResult:
    """How a fit ended. `history` holds the epochs.jsonl records of this call."""

    val_metric: str
    best_metric: float
    best_epoch: int  # 1-based
    epochs_run: int  # epochs completed in total, including those before a resume
    stopped_early: bool
    history: tuple[Mapping[str, Any], ...]
    best_checkpoint: Path
    last_checkpoint: Path
    log_path: Path


def git_commit() -> str | None:
    """The commit of the working tree this file lives in, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def select_device(requested: str | None = None) -> torch.device:
    """`requested` when given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by these loops (safe load: tensors and plain types only)."""
    ckpt: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a train.common.loops checkpoint")
    return ckpt


def load_weights(module: nn.Module, path: str | os.PathLike[str], name: str = "model") -> None:
    """Load one module's weights (`name`: "model", "generator", ...) from a checkpoint."""
    module.load_state_dict(load_checkpoint(path)["modules"][name])


# --- the core --------------------------------------------------------------------------------


@dataclass
class Runtime:
    """What a step function needs: device, autocast and the backward/optimizer step."""

    device: torch.device
    config: FitConfig
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.scaler is not None:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward `loss` and step `optimizer` (scaled under AMP, clipped when configured)."""
        clip = self.config.grad_clip_norm
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(optimizer)
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()

    def to_device(self, value: Any) -> Any:
        return value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value


StepFn = Callable[[Any, Runtime], Mapping[str, float]]
EvalFn = Callable[[Iterable[Any], Runtime], Mapping[str, float]]


def _better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _loader_generators(loader: Iterable[Any]) -> dict[str, torch.Generator]:
    found: dict[str, torch.Generator] = {}
    for name, owner in (("loader", loader), ("sampler", getattr(loader, "sampler", None))):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[name] = generator
    return found


@dataclass
class Trainer:
    """One fit: `run()` trains `modules` with `step`, validates with `evaluate`, checkpoints."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: StepFn
    evaluate: EvalFn
    train_loader: Iterable[Any]
    val_loader: Iterable[Any]
    config: FitConfig
    out_dir: Path
    monitor: str
    mode: Literal["max", "min"]
    resume: Path | None = None
    schedulers: dict[str, Any] = field(default_factory=dict)

    def _checkpoint(self, epoch: int, best: float | None, best_epoch: int, bad: int,
                    scaler: torch.amp.GradScaler | None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "best_metric": best,
            "best_epoch": best_epoch,
            "epochs_without_improvement": bad,
            "val_metric": self.monitor,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "loader_rng": {
                k: g.get_state() for k, g in _loader_generators(self.train_loader).items()
            },
            "config": self.config.to_dict(),
            "git_commit": git_commit(),
        }

    def run(self) -> FitResult:
        cfg = self.config
        seed_everything(cfg.seed, deterministic=cfg.deterministic)
        device = select_device(cfg.device)
        for module in self.modules.values():
            module.to(device)
        use_amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        rt = Runtime(device, cfg, scaler)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / "epochs.jsonl"
        last_path, best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"

        start, best, best_epoch, bad = 0, None, 0, 0
        if self.resume is not None:
            ckpt = load_checkpoint(self.resume)
            for k, m in self.modules.items():
                m.load_state_dict(ckpt["modules"][k])
            for k, o in self.optimizers.items():
                o.load_state_dict(ckpt["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(ckpt["schedulers"][k])
            if scaler is not None and ckpt["scaler"] is not None:
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            for k, g in _loader_generators(self.train_loader).items():
                if k in ckpt["loader_rng"]:
                    g.set_state(ckpt["loader_rng"][k])
            start, best, best_epoch = ckpt["epoch"], ckpt["best_metric"], ckpt["best_epoch"]
            bad = ckpt["epochs_without_improvement"]
            log.info("fit_resumed epoch=%d checkpoint=%s", start, Path(self.resume).name)
        elif log_path.exists():
            log_path.unlink()

        history: list[dict[str, Any]] = []
        stopped_early = False
        epoch = start
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            for m in self.modules.values():
                m.train()
            sums: dict[str, float] = {}
            n_steps = 0
            bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                       disable=not cfg.progress, dynamic_ncols=True)
            for batch in bar:
                if cfg.max_steps_per_epoch is not None and n_steps >= cfg.max_steps_per_epoch:
                    break
                losses = self.step(batch, rt)
                if scaler is not None:
                    scaler.update()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
                bar.set_postfix(loss=f"{sums.get('loss', 0.0) / n_steps:.4f}")
            bar.close()
            for m in self.modules.values():
                m.eval()
            with torch.no_grad():
                val = dict(self.evaluate(self.val_loader, rt))
            metric = float(val[self.monitor])
            improved = _better(metric, best, self.mode, cfg.min_delta)
            if improved:
                best, best_epoch, bad = metric, epoch, 0
            else:
                bad += 1
            for s in self.schedulers.values():
                if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    signed = metric if math.isfinite(metric) else (
                        -math.inf if self.mode == "max" else math.inf)
                    s.step(signed)
                else:
                    s.step()
            first_opt = next(iter(self.optimizers.values()))
            record: dict[str, Any] = {
                "epoch": epoch,
                **{f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()},
                **{f"val_{k}": v for k, v in val.items()},
                "lr": first_opt.param_groups[0]["lr"],
                "best_metric": best,
                "best_epoch": best_epoch,
                "improved": improved,
                "time_s": round(time.perf_counter() - t0, 3),
            }
            record = {k: _clean(v) for k, v in record.items()}
            history.append(record)
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if cfg.progress:
                tqdm.write(f"epoch {epoch}: loss {record.get('train_loss')} "
                           f"{self.monitor} {metric:.4f} (best {best:.4f} @ {best_epoch})")
            ckpt = self._checkpoint(epoch, best, best_epoch, bad, scaler)
            _atomic_save(ckpt, last_path)
            if improved:
                _atomic_save(ckpt, best_path)
            if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                _atomic_save(ckpt, self.out_dir / f"epoch_{epoch:03d}.pt")
            if cfg.patience and bad >= cfg.patience:
                stopped_early = True
                log.info("fit_stopped_early epoch=%d best_epoch=%d", epoch, best_epoch)
                break

        if cfg.restore_best and best_path.exists():
            best_ckpt = load_checkpoint(best_path)
            for k, m in self.modules.items():
                m.load_state_dict(best_ckpt["modules"][k])
        return FitResult(
            val_metric=self.monitor,
            best_metric=float("nan") if best is None else float(best),
            best_epoch=best_epoch,
            epochs_run=epoch,
            stopped_early=stopped_early,
            history=tuple(history),
            best_checkpoint=best_path,
            last_checkpoint=last_path,
            log_path=log_path,
        )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: FitConfig, mode: Literal["min", "max"]) -> Any:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return None


def unpack(batch: Any, *keys: str) -> tuple[Any, ...]:
    if isinstance(batch, Mapping):
        return tuple(batch.get(k) for k in keys)
    return tuple(batch[i] if i < len(batch) else None for i in range(len(keys)))
