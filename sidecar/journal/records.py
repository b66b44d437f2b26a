"""The journal's records: frozen dataclasses handed to and from every backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance, as the listener records it."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    modality: str
    path: str
    size: int
    calling_ae: str = ""
    expected_count: int | None = None  # from the header (frames, ImagesInAcquisition, ...)


@dataclass(frozen=True)
class Recorded:
    """What `record_instance` did: `new` False for a duplicate; `reopened` for a late instance."""

    new: bool
    first_of_series: bool
    reopened: bool
    n_instances: int
    revision: int


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str
    calling_ae: str
    state: str
    route: str | None
    model_id: str | None
    mode: str | None
    expected_count: int | None
    n_instances: int
    revision: int
    first_received: float
    last_received: float
    completed_at: float | None


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    path: str
    size: int
    received_at: float


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    instance_uid: str  # '' for a series job
    model_id: str
    model_version: str
    revision: int
    route: str
    priority: int
    state: str
    attempts: int
    reason: str | None
    not_before: float | None = None  # a retried job is not claimed before this


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int
    series_uid: str
    destination: str
    sop_instance_uid: str
    path: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class Event:
    series_uid: str
    kind: str
    at: float
    detail: str
