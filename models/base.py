"""The seam every clinical model plugs into.

A model is anything with a `card`, `prepare(datasets) -> batch` and `predict(batch) -> Findings`.
`prepare` uses the model's own `transforms` module, the same code training uses, so what the
model saw in training is exactly what it sees in service. Models never see pynetdicom; they get
pydicom Datasets with pixel data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydicom import Dataset

from models.findings import Findings


@dataclass(frozen=True)
class ModelCard:
    """What a model is, for the device observer in the SR and for the people reading it."""

    id: str  # stable model id, e.g. "lge_qa"
    version: str  # bumps whenever weights or preprocessing change; part of result UIDs
    name: str  # human name, e.g. "LGE CMR slice certainty"
    manufacturer: str
    intended_use: str
    labels: tuple[str, ...]
    not_for_clinical_use: bool = True
    reference: str = ""  # the published study this model follows
    published: dict[str, float] = field(default_factory=dict)  # the study's own figures


@runtime_checkable
class ClinicalModel(Protocol):
    """The protocol the worker calls. Implementations keep their weights warm."""

    card: ModelCard

    def prepare(self, datasets: Sequence[Dataset]) -> Any:
        """Turn the instances of one job into a batch (tensors plus the references needed)."""
        ...

    def predict(self, batch: Any) -> Findings:
        """Run the network on a prepared batch and return findings."""
        ...
