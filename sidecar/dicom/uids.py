"""UID checks and deterministic result UIDs.

The UID grammar is PS3.5 §9.1: components of digits separated by '.', no leading zero in a
component of more than one digit, at most 64 characters. Only UIDs that pass this check are
ever used to build a path, so a crafted UID cannot escape the spool.

Result UIDs are derived (PS3.5 §B.2, the 2.25 root from a UUID made of a hash) from the input
UID, the model id and version, the kind of object and a revision, so that re-running a job after
a crash yields the same UIDs instead of duplicates, and a superseding result gets new ones.
"""

from __future__ import annotations

import hashlib
import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """True when `value` is a str that satisfies the DICOM UID grammar."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def derive_uid(*parts: str) -> str:
    """A UID under 2.25 that is a pure function of `parts` (never random)."""
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    digest = hashlib.sha256("\x1f".join(["sidecar-result-v1", *parts]).encode("utf-8")).digest()
    # A name-based UUID (RFC 9562 version 8 layout) rendered as its integer under 2.25.
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(raw, 'big')}"


def result_uid(
    input_uid: str, model_id: str, model_version: str, kind: str, revision: int = 0
) -> str:
    """The UID of one result object (`kind` e.g. "sr-series", "sr-instance", "sc:1")."""
    return derive_uid(input_uid, model_id, model_version, kind, str(revision))


def short_uid(uid: str) -> str:
    """A short, stable, non-reversible tag for a UID, for logs (first 12 hex of SHA-256)."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]
