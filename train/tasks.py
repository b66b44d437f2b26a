"""The registry of trainable tasks: model id -> what `python -m train <model> ...` runs.

A model's training package registers one `TaskSpec` when imported and lists its module in
`TASK_MODULES`; the CLI imports those modules and dispatches. A task gets typed requests (built
from the command line by train.cli) and writes into the folders they name:

    fit           FitRequest -> FitResult (checkpoints and epochs.jsonl in out_dir)
    evaluate      EvaluateRequest -> Path (metrics.json, report.md, PNGs in out_dir)
    card          CardRequest -> Path (card.md, card.yaml in out_dir)
    demo-weights  DemoWeightsRequest -> Path (the bundled weights file, rebuilt from phantoms)
    export        ExportRequest -> ExportResult (ONNX or TorchScript file per network, a Triton
                  repository); optional: only tasks whose model adopted models/backends offer it
                  (every clinical model's task does; `train.common.export` does the work)

Without `--manifest`, fit and evaluate use the task's own seeded phantom data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
class ExportRequest:
    """Export a checkpoint's network forward for onnxruntime or Triton, checked against torch."""

    format: Literal["onnx", "torchscript"]
    out_dir: Path  # the exported file (<model>.onnx or <model>.pt) for in-process backends
    checkpoint: Path | None = None  # None: the task's bundled weights
    triton_repo: Path | None = None  # also write <repo>/<model>/config.pbtxt and 1/model.*
    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000
    alert_queue_timeout_ms: int = 500  # Triton queue timeout of priority level 1 (streaming alerts)
    default_queue_timeout_ms: int = 5000
    tolerance: float = 1e-4  # largest accepted |torch - export| over every output on the check inputs


@dataclass(frozen=True)
class ExportedNetwork:
    """One network's exported file and how far it was from the in-process forward."""

    network: str  # "" for a model's only network
    model_file: Path
    triton_model_dir: Path | None
    max_abs_diff: float
    input_names: tuple[str, ...]  # in the Triton repository (TorchScript: "<name>__0")
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, one entry per network (hand_joints has two), and how far each was
    from the in-process model. The properties answer for the first network."""

    networks: tuple[ExportedNetwork, ...]

    @property
    def model_file(self) -> Path:
        return self.networks[0].model_file

    @property
    def triton_model_dir(self) -> Path | None:
        return self.networks[0].triton_model_dir

    @property
    def max_abs_diff(self) -> float:
        """The largest difference over every network."""
        return max(n.max_abs_diff for n in self.networks)

    @property
    def input_name(self) -> str:
        return self.networks[0].input_names[0]

    @property
    def output_name(self) -> str:
        return self.networks[0].output_names[0]


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
    export: Callable[[ExportRequest], ExportResult] | None = None  # None: in-process only


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
