"""The frozen dataclasses one stage hands the next (DESIGN: "Stages hand each other typed,
frozen dataclasses").

Ingest hands the assembler `InstanceReceived` for every instance that is durable and journalled,
and `AssociationReleased` when an association that stored instances ends normally. This module
sits below every stage so that none of them imports another stage to learn a type.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.dicom.headers import InstanceHeader
from sidecar.journal.records import Recorded


@dataclass(frozen=True)
class InstanceReceived:
    """Handed to the assembler after an instance is durable and journalled."""

    header: InstanceHeader
    path: str
    recorded: Recorded
    calling_ae: str


@dataclass(frozen=True)
class AssociationReleased:
    """Handed to the assembler when an association that stored instances ends normally."""

    calling_ae: str
    series_uids: frozenset[str]


__all__ = ["AssociationReleased", "InstanceReceived"]
