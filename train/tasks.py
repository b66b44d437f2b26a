"""The registry of trainable tasks: model id -> what `python -m train <model> ...` runs.

A model's training package registers one `TaskSpec` when imported and lists its module in
`TASK_MODULES`; the CLI imports those modules and dispatches. A task gets typed requests (built
from the command line by train.cli) and writes into the folders they name:

    fit           FitRequest -> FitResult (checkpoints and epochs.jsonl in out_dir)
    evaluate      EvaluateRequest -> Path (metrics.json, report.md, PNGs in out_dir)
    card          CardRequest -> Path (card.md, card.yaml in out_dir)
    demo-weights  DemoWeightsRequest -> Path (the bundled weights file, rebuilt from phantoms)

Without `--manifest`, fit and evaluate use the task's own seeded phantom data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from train.common.manifest import Key
from train.common.trainer import FitConfig, FitResult

# Modules that register tasks on import; each model issue appends its own.
TASK_MODULES: tuple[str, ...] = ("train.toy", "train.lge_qa.task", "train.hand_joints.task", "train.elastography.task",
                                 "train.synovitis.task", "train.gout_mtp1.task")


@dataclass(frozen=True)
class FitRequest:
    """Train: data from `manifest` (its train/val splits) or the task's phantoms."""

    out_dir: Path
    config: FitConfig
    manifest: Path | None = None
    batch_size: int = 16
    num_workers: int = 0
    resume: Path | None = None


@dataclass(frozen=True)
class EvaluateRequest:
    """Evaluate `checkpoint` on one split of `manifest` (or of the task's phantoms)."""

    checkpoint: Path
    out_dir: Path
    manifest: Path | None = None
    split: str = "test"
    batch_size: int = 32
    device: str | None = None
    seed: int = 0  # bootstrap seed for the confidence intervals


@dataclass(frozen=True)
class CardRequest:
    """Write a model card from an evaluation folder and the weights it evaluated."""

    evaluation_dir: Path
    checkpoint: Path
    out_dir: Path


@dataclass(frozen=True)
class DemoWeightsRequest:
    """Rebuild the bundled demo weights from phantoms with a fixed seed."""

    work_dir: Path
    out_path: Path | None = None  # None: the task's own bundled weights path
    seed: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """One trainable model as the CLI sees it."""

    name: str  # the model id, e.g. "lge_qa"
    summary: str  # one line for --help
    fit: Callable[[FitRequest], FitResult]
    evaluate: Callable[[EvaluateRequest], Path]
    card: Callable[[CardRequest], Path]
    demo_weights: Callable[[DemoWeightsRequest], Path]
    default_config: FitConfig = field(default_factory=FitConfig)
    manifest_key: Key = "sop_instance_uid"  # the label CSV key `manifest` defaults to


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to TASKS; a second, different spec under the same name is an error."""
    existing = TASKS.get(spec.name)
    if existing is not None and existing is not spec:
        raise ValueError(f"task {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def load_tasks() -> dict[str, TaskSpec]:
    """Import every module in TASK_MODULES (each registers its task) and return TASKS."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    return TASKS
