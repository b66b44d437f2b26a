"""STOW-RS: the store transport for a DICOMweb destination (PS3.18 10.5), on httpx.

Files go out as one `multipart/related; type="application/dicom"` POST to `{url}/studies` per
batch (batches split at `max_request_bytes`). The answer is a Store Instances Response Module
(PS3.18 10.5.3.1, application/dicom+json): the instances stored are in ReferencedSOPSequence
(0008,1199), the ones refused in FailedSOPSequence (0008,1198) with a FailureReason (0008,1197)
that carries a C-STORE status, so the same retry policy as for DICOM applies to each file
(`classify_store_status`).

HTTP status of the whole request (PS3.18 table 10.5.3-1), where no per-instance answer is given:

- 200: every instance stored (delivered);
- 202 / 409: some / all refused; the per-instance reasons decide, an instance not named is retried;
- 408, 429, 5xx, connection errors and timeouts: retryable;
- any other 4xx (bad request, unauthorised, forbidden, not found, unsupported media type):
  not retryable (configuration or content; retrying would only repeat it).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from sidecar.dicom.status import StoreStatus
from sidecar.egress.outcome import SendOutcome, classify_store_status
from sidecar.errors import DeliveryError
from sidecar.settings import DicomwebDestination
from sidecar.tls import client_context

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
_RETRY_HTTP = frozenset({408, 429})


@dataclass(frozen=True)
class _File:
    index: int
    sop_instance_uid: str
    data: bytes


class DicomwebTransport:
    """STOW-RS to one DICOMweb destination; thread-safe (one httpx client, reused)."""

    def __init__(self, dest: DicomwebDestination, client: httpx.Client | None = None) -> None:
        """`client` replaces the real one in tests (e.g. with an httpx.MockTransport)."""
        self.dest = dest
        headers = {"Accept": "application/dicom+json"}
        if dest.auth is not None:
            headers[dest.auth_header] = dest.auth.get_secret_value()
        verify: Any = client_context(dest.tls) if dest.tls is not None else True
        self._client = client or httpx.Client(
            headers=headers, timeout=dest.timeout_s, verify=verify, trust_env=False, follow_redirects=False,
        )
        if client is not None:
            self._client.headers.update(headers)
        self._root = dest.url.rstrip("/")

    def close(self) -> None:
        self._client.close()

    def echo(self) -> None:
        """QIDO-RS `GET {url}/studies?limit=1`: any 2xx means the server answers and admits us."""
        try:
            rsp = self._client.get(f"{self._root}/studies", params={"limit": "1"})
        except httpx.HTTPError as exc:
            raise DeliveryError(f"cannot reach DICOMweb destination {self.dest.name}: {type(exc).__name__}") from exc
        if not rsp.is_success:
            raise DeliveryError(f"DICOMweb destination {self.dest.name} answered HTTP {rsp.status_code}")

    def send(self, paths: Sequence[str]) -> list[SendOutcome]:
        outcomes: list[SendOutcome | None] = [None] * len(paths)
        files: list[_File] = []
        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
                uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception as exc:
                outcomes[i] = SendOutcome.failed(f"cannot read {Path(path).name}: {type(exc).__name__}"[:500])
                continue
            files.append(_File(i, uid, data))
        for batch in self._batches(files):
            for item, outcome in zip(batch, self._post(batch), strict=True):
                outcomes[item.index] = outcome
        return [o if o is not None else SendOutcome.retry("not attempted") for o in outcomes]

    def _batches(self, files: list[_File]) -> Iterator[list[_File]]:
        batch: list[_File] = []
        size = 0
        for f in files:
            if batch and size + len(f.data) > self.dest.max_request_bytes:
                yield batch
                batch, size = [], 0
            batch.append(f)
            size += len(f.data)
        if batch:
            yield batch

    def _post(self, batch: list[_File]) -> list[SendOutcome]:
        boundary = secrets.token_hex(16)
        body = b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f.data + b"\r\n"
            for f in batch
        ) + b"--" + boundary.encode() + b"--\r\n"
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            rsp = self._client.post(f"{self._root}/studies", content=body, headers={"Content-Type": ctype})
        except httpx.HTTPError as exc:
            why = f"STOW-RS to {self.dest.name} failed: {type(exc).__name__}"
            return [SendOutcome.retry(why) for _ in batch]
        return _outcomes(rsp, batch, self.dest.name)


def _outcomes(rsp: httpx.Response, batch: list[_File], name: str) -> list[SendOutcome]:
    """One outcome per file from a STOW-RS response (see the module docstring)."""
    code = rsp.status_code
    if code not in (200, 202, 409):
        why = f"STOW-RS to {name}: HTTP {code}"
        if code in _RETRY_HTTP or code >= 500:
            return [SendOutcome.retry(why) for _ in batch]
        return [SendOutcome.failed(why) for _ in batch]
    stored, failed = _parse(rsp)
    result = []
    for f in batch:
        if f.sop_instance_uid in failed:
            reason = failed[f.sop_instance_uid]
            if reason is None:
                result.append(SendOutcome.retry(f"STOW-RS to {name}: refused without a reason (HTTP {code})"))
            else:
                result.append(classify_store_status(reason, f"STOW-RS HTTP {code}"))
        elif f.sop_instance_uid in stored or code == 200:
            result.append(SendOutcome.delivered(stored.get(f.sop_instance_uid, StoreStatus.SUCCESS)))
        else:
            result.append(SendOutcome.retry(f"STOW-RS to {name}: instance not in the response (HTTP {code})"))
    return result


def _parse(rsp: httpx.Response) -> tuple[dict[str, int], dict[str, int | None]]:
    """(stored UID -> status, failed UID -> failure reason) from the DICOM JSON answer."""
    try:
        doc = rsp.json()
    except ValueError:
        return {}, {}
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    if not isinstance(doc, dict):
        return {}, {}
    stored = {uid: _int(item, WARNING_REASON) or StoreStatus.SUCCESS
              for uid, item in _items(doc, REFERENCED_SOP_SEQUENCE)}
    failed = {uid: _int(item, FAILURE_REASON) for uid, item in _items(doc, FAILED_SOP_SEQUENCE)}
    return stored, failed


def _items(doc: dict[str, Any], tag: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in (doc.get(tag) or {}).get("Value") or []:
        if isinstance(item, dict):
            values = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
            if values:
                yield str(values[0]), item


def _int(item: dict[str, Any], tag: str) -> int | None:
    values = (item.get(tag) or {}).get("Value") or []
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


__all__ = ["DicomwebTransport"]
