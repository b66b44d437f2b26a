"""The seam every clinical model plugs into.

A model is anything with a `card`, `prepare(datasets) -> batch` and `predict(batch) -> Findings`.
`prepare` uses the model's own `transforms` module, the same code training uses, so what the
model saw in training is exactly what it sees in service. Models never see pynetdicom; they get
pydicom Datasets with pixel data.

Everything the result writers say that is particular to one model (the coded question its answer
is reported under, the words for its labels, the technologist's alert advice) is the model's own:
a `ReportVocabulary` in `models/<name>/concepts.py`, carried on the card. The writers in
`sidecar/results` know no model by name (docs/adding-a-model.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydicom import Dataset
from pydicom.sr.coding import Code

from models.findings import Findings

#: The project's private coding scheme (PS3.16 §8.2: designators starting "99" are private);
#: every object that uses it declares it in its Coding Scheme Identification Sequence.
PRIVATE_SCHEME = "99SIDECAR"
_SH_MAX = 16  # Code Value is SH (PS3.5 §6.2)
_LO_MAX = 64  # Code Meaning is LO


def private_code(key: str, meaning: str) -> Code:
    """A concept of the private scheme whose code value is a hash of `key` (stable, <= 16 chars).

    The same key always gives the same code, so a model's concepts never change between runs.
    """
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest().upper()
    return Code(("SC" + digest)[:_SH_MAX], PRIVATE_SCHEME, meaning[:_LO_MAX])


@dataclass(frozen=True)
class ReportVocabulary:
    """How the result writers name one model's answers.

    `question` is the concept the answer is reported under: the name of the CODE evaluation
    (value: the label's concept) and of the NUM a viewer lists (value: the label's ordinal score
    when the labels are grades, else the probability of the answer). `grade` names a detection's
    grade (default: `question`). `label_text` gives the words a reader sees for a label (default:
    the label with underscores as spaces); `label_codes` a standard coded value where one exists
    (default: SNOMED Normal/Abnormal/Present/Absent by name, else a private code per label).
    `ordinal` maps grade labels to their score. `alert_advice` ends the technologist's QA alert.
    """

    question: Code
    grade: Code | None = None
    label_text: Mapping[str, str] = field(default_factory=dict)
    label_codes: Mapping[str, Code] = field(default_factory=dict)
    ordinal: Mapping[str, int] = field(default_factory=dict)
    alert_advice: str = ""

    def text(self, label: str) -> str:
        """The words for `label` a reader sees."""
        return self.label_text.get(label) or label.replace("_", " ")

    @property
    def grade_concept(self) -> Code:
        return self.grade or self.question


#: What a model without its own vocabulary is reported under.
GENERIC_VOCABULARY = ReportVocabulary(
    question=private_code("concept/ai-classification", "AI classification"),
    grade=private_code("concept/ai-grade", "AI grade"),
)


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
    vocabulary: ReportVocabulary = GENERIC_VOCABULARY  # the model's SR concepts and wording

    def alert_lines(
        self, label: str, probability: float, *, series_number: object, instance_number: int | None,
        not_for_clinical_use: bool,
    ) -> tuple[str, ...]:
        """The text of a technologist QA alert about one image: no patient data, ever."""
        image = instance_number if instance_number is not None else "?"
        series = series_number if series_number not in (None, "") else "?"
        lines = [
            "AI QA ALERT - NOT FOR CLINICAL USE" if not_for_clinical_use else "AI QA ALERT",
            f"Model: {self.id} {self.version}",
            f"Series {series}  image {image}",
            f"Result: {self.vocabulary.text(label)} (p = {probability:.2f})",
        ]
        if self.vocabulary.alert_advice:
            lines.append(self.vocabulary.alert_advice)
        return tuple(lines)


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
