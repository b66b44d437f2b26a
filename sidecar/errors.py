"""One rooted exception tree for the sidecar.

    SidecarError
    ├── ConfigError            invalid configuration (file, key, what was expected)
    ├── IngestError            an instance the listener cannot keep
    │   ├── InvalidInstance    missing/invalid attributes or UIDs     -> "cannot understand"
    │   ├── InstanceRefused    not allowed (SOP class, caller)        -> "refused"
    │   ├── InstanceTooLarge   over the size or dimension limits      -> "out of resources"
    │   └── SpoolFull          disk below its watermark or write fail -> "out of resources"
    ├── JournalError           the journal cannot be read or written
    │   └── JournalFull        its disk is full: transient, retry once space returns
    ├── RoutingError           a rule cannot be built
    ├── ModelError             a model cannot be loaded or fails on a job
    │   └── WeightsMismatch    weights file missing or SHA-256 differs
    ├── ResultError            a result object cannot be built
    ├── DeliveryError          a destination refused or could not be reached
    └── AlertError             an alert channel (webhook) refused or could not be reached

Catch broadly only at boundaries: the association handler (becomes a DIMSE status), the
worker's job boundary (a failed job with its reason), the alert fan-out (logged).
"""

from __future__ import annotations


class SidecarError(Exception):
    """Root of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """Configuration is invalid; the message names the file, the key and what was expected."""

    def __init__(self, file: str, key: str, expected: str) -> None:
        self.file, self.key, self.expected = file, key, expected
        super().__init__(f"{file}: {key}: {expected}")


class IngestError(SidecarError):
    """An instance the listener cannot keep."""


class InvalidInstance(IngestError):
    """A required attribute is missing or invalid (DIMSE 'cannot understand')."""


class InstanceRefused(IngestError):
    """The instance is understood but not accepted (DIMSE 'refused')."""


class InstanceTooLarge(IngestError):
    """Bigger than the configured size or dimension limits (DIMSE 'out of resources')."""


class SpoolFull(IngestError):
    """The spool cannot take the instance (DIMSE 'out of resources')."""


class JournalError(SidecarError):
    """The journal cannot be read or written."""


class JournalFull(JournalError):
    """The journal's disk is full ("database or disk is full"; PostgreSQL's disk_full).

    Transient: nothing was written, and the same write succeeds once space returns.
    """


class RoutingError(SidecarError):
    """A routing rule cannot be built."""


class ModelError(SidecarError):
    """A model cannot be loaded, or fails on a job."""


class WeightsMismatch(ModelError):
    """The weights file is missing or its SHA-256 differs from the configured one."""


class ResultError(SidecarError):
    """A result object cannot be built from the findings."""


class DeliveryError(SidecarError):
    """A destination refused a result or could not be reached."""


class AlertError(SidecarError):
    """An alert channel refused an alert or could not be reached (logged by the fan-out, never fatal)."""
