"""STOW-RS receive (PS3.18 10.5): `POST /dicom-web/studies[/{study}]` into the same ingest path.

Each part of the `multipart/related; type="application/dicom"` body is streamed (python-multipart)
into a temporary file on the spool's disk, never held whole in memory, and handed to the same
`IngestService` as a C-STORE: same checks, same duplicate policy, same durability (fsync, rename,
journal) before the answer. The answer is a Store Instances Response (PS3.18 10.5.3) as DICOM
JSON: ReferencedSOPSequence for what was kept, FailedSOPSequence with FailureReason (the DIMSE
status C-STORE would have given) for what was not. HTTP status: 200 all kept, 202 some kept,
409 none kept, 400 a body that is not multipart/related DICOM, 413 every instance over
`limits.max_instance_bytes` (or the body over its cap), 507 none kept for want of disk,
401/403 without the admin token, 415 another media type.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import structlog
from pydantic import SecretStr
from pydicom import Dataset
from pydicom.sequence import Sequence
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sidecar.dicom.status import StoreStatus
from sidecar.dicom.uids import is_valid_uid
from sidecar.errors import SpoolFull
from sidecar.ingest.service import IngestService, Outcome
from sidecar.ingest.spool import Spool

log = structlog.get_logger("sidecar.ingest.stow")

DICOM_JSON = "application/dicom+json"
STOW_CALLING_AE = "STOW-RS"  # what the journal records as the sender of a STOW-RS instance


@dataclass
class _Part:
    path: Path | None = None
    fh: BinaryIO | None = None
    size: int = 0
    too_large: bool = False
    write_failed: str = ""


@dataclass
class _Body:
    """The parts of one request body as they stream in, each to a spool temp file."""

    spool: Spool
    limit: int
    parts: list[_Part] = field(default_factory=list)

    def begin(self) -> None:
        part = _Part()
        try:
            part.fh, part.path = self.spool.incoming()
        except SpoolFull as exc:
            part.write_failed = str(exc)
        self.parts.append(part)

    def data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.fh is None or part.too_large or part.write_failed:
            return
        if part.size > self.limit:
            part.too_large = True
            part.fh.truncate(0)
            return
        try:
            part.fh.write(data[start:end])
        except OSError as exc:
            part.write_failed = f"spool write failed: {exc.strerror or exc}"
            part.fh.truncate(0)

    def end(self) -> None:
        part = self.parts[-1]
        if part.fh is not None:
            part.fh.close()
            part.fh = None

    def discard(self) -> None:
        for part in self.parts:
            if part.fh is not None:
                part.fh.close()
            if part.path is not None:
                part.path.unlink(missing_ok=True)


class StowReceiver:
    """The STOW-RS endpoint; one per sidecar, sharing the listener's ingest service."""

    def __init__(self, service: IngestService, spool: Spool, admin_token: SecretStr | None,
                 *, max_body_bytes: int) -> None:
        self.service, self.spool, self.admin_token = service, spool, admin_token
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: Request) -> Response:
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        study = request.path_params.get("study")
        if study is not None and not is_valid_uid(study):
            return _error(400, "the study UID in the URL is not a valid UID")
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        part_type = options.get(b"type", b"application/dicom").strip(b'"').lower()
        if kind.lower() != b"multipart/related" or part_type != b"application/dicom":
            return _error(415, 'expected multipart/related; type="application/dicom"')
        boundary = options.get(b"boundary")
        if not boundary:
            return _error(400, "multipart/related without a boundary")
        body = _Body(self.spool, self.service.max_instance_bytes)
        parser = MultipartParser(boundary.strip(b'"'), {
            "on_part_begin": body.begin, "on_part_data": body.data, "on_part_end": body.end,
        })
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > self.max_body_bytes:
                    body.discard()
                    return _error(413, f"request body over {self.max_body_bytes} bytes")
                await run_in_threadpool(parser.write, chunk)
            parser.finalize()
        except Exception as exc:  # boundary: a malformed body is a 400, never a crash
            body.discard()
            return _error(400, f"body is not multipart/related: {type(exc).__name__}")
        if not body.parts:
            return _error(400, "no DICOM part in the body")
        return await run_in_threadpool(self._ingest_all, body, study)

    def _authorize(self, request: Request) -> Response | None:
        if self.admin_token is None:
            return _error(403, "STOW-RS is disabled: no web.admin_token is configured")
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.admin_token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _error(401, "STOW-RS needs Authorization: Bearer <web.admin_token>")
        return None

    def _ingest_all(self, body: _Body, study: str | None) -> Response:
        kept: list[tuple[str, str]] = []
        failed: list[tuple[str, str, StoreStatus]] = []
        too_large = out_of_space = 0
        for part in body.parts:
            sop_class, sop_instance = _uids(part.path)
            if part.path is None or part.write_failed:
                out_of_space += 1
                failed.append((sop_class, sop_instance, StoreStatus.REFUSED_OUT_OF_RESOURCES))
                continue
            if part.too_large:
                part.path.unlink(missing_ok=True)
                too_large += 1
                failed.append((sop_class, sop_instance, StoreStatus.REFUSED_OUT_OF_RESOURCES))
                continue
            outcome: Outcome = self.service.ingest(part.path, calling_ae=STOW_CALLING_AE, expected_study_uid=study)
            if outcome.ok:
                kept.append((sop_class, sop_instance))
            else:
                if outcome.status == StoreStatus.REFUSED_OUT_OF_RESOURCES and "exceeds" not in outcome.comment:
                    out_of_space += 1
                failed.append((sop_class, sop_instance, outcome.status))
        log.info("stow_received", kept=len(kept), failed=len(failed))
        if not failed:
            status = 200
        elif kept:
            status = 202
        elif too_large == len(failed):
            status = 413
        elif out_of_space == len(failed):
            status = 507
        else:
            status = 409
        return JSONResponse(_response(kept, failed), status_code=status, media_type=DICOM_JSON)


def _uids(path: Path | None) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a received part, for the response ('' where unreadable)."""
    if path is None:
        return "", ""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # unreadable: the ingest answer says why
        return "", ""


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    if is_valid_uid(sop_class):
        item.ReferencedSOPClassUID = sop_class
    if is_valid_uid(sop_instance):
        item.ReferencedSOPInstanceUID = sop_instance
    return item


def _response(kept: list[tuple[str, str]], failed: list[tuple[str, str, StoreStatus]]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 10.5.3.2), as DICOM JSON."""
    ds = Dataset()
    if kept:
        ds.ReferencedSOPSequence = Sequence([_ref(c, i) for c, i in kept])
    if failed:
        items = []
        for c, i, status in failed:
            item = _ref(c, i)
            item.FailureReason = int(status)
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return ds.to_json_dict()


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


__all__ = ["StowReceiver"]
