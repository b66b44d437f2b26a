"""What became of one file sent to a destination, for every transport (DICOM, DICOMweb, folder).

`classify_store_status` maps a C-STORE response status (PS3.4 B.2.3) to delivered, worth retrying,
or refused for good; STOW-RS maps each instance's FailureReason through the same function, so both
kinds of destination follow one retry policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.dicom.status import StoreStatus

_DELIVERED_WARNINGS = frozenset(
    {
        StoreStatus.COERCION_OF_DATA_ELEMENTS,
        StoreStatus.ELEMENTS_DISCARDED,
        StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    }
)


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file: delivered, worth retrying, or not."""

    ok: bool
    retryable: bool = False
    status: int | None = None  # the DIMSE status when the peer answered
    error: str = ""

    @classmethod
    def delivered(cls, status: int | None = None) -> SendOutcome:
        return cls(ok=True, retryable=False, status=status)

    @classmethod
    def retry(cls, error: str, status: int | None = None) -> SendOutcome:
        return cls(ok=False, retryable=True, status=status, error=error)

    @classmethod
    def failed(cls, error: str, status: int | None = None) -> SendOutcome:
        return cls(ok=False, retryable=False, status=status, error=error)


def classify_store_status(status: int, comment: str = "") -> SendOutcome:
    """Map a C-STORE response status to an outcome (see the module docstring)."""
    detail = f"status 0x{status:04X}" + (f" ({comment})" if comment else "")
    if status == StoreStatus.SUCCESS or status in _DELIVERED_WARNINGS:
        return SendOutcome.delivered(status)
    if status == StoreStatus.DUPLICATE_SOP_INSTANCE:
        return SendOutcome.delivered(status)
    if status & 0xFF00 == StoreStatus.REFUSED_OUT_OF_RESOURCES & 0xFF00:
        return SendOutcome.retry(f"peer out of resources: {detail}", status)
    if status == StoreStatus.PROCESSING_FAILURE:
        return SendOutcome.retry(f"peer processing failure: {detail}", status)
    if status & 0xFF00 == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS & 0xFF00:
        return SendOutcome.failed(f"peer says data set does not match SOP class: {detail}", status)
    if status & 0xF000 == StoreStatus.CANNOT_UNDERSTAND & 0xF000:
        return SendOutcome.failed(f"peer cannot understand: {detail}", status)
    if status & 0xF000 == 0xB000:  # another warning: the peer stored it
        return SendOutcome.delivered(status)
    return SendOutcome.failed(f"peer refused: {detail}", status)
