"""STOW-RS receive (PS3.18 10.5) with curl as the client: the same ingest path as C-STORE.

Every answer is a Store Instances Response in DICOM JSON; statuses as docs/configuration.md says.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from tests.helpers.dicom_factory import make_mr
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.integration]

TOKEN = "stow-test-token"
BOUNDARY = "sidecar-test-boundary"
FAILED_SOP = "00081198"
REFERENCED_SOP = "00081199"
FAILURE_REASON = "00081197"
SOP_INSTANCE = "00081155"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    cfg = write_config(tmp_path_factory.mktemp("stow") / "conf", routes=[],
                       limits={"min_free_disk_bytes": 0, "max_instance_bytes": 256 * 1024},
                       web={"enabled": True, "port": 0, "admin_token": TOKEN})
    with running_sidecar(cfg) as sidecar:
        yield sidecar


def _file(ds: Dataset, folder: Path) -> bytes:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _body(parts: list[bytes]) -> bytes:
    out = b""
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _post(app: Sidecar, body: bytes, folder: Path, *, path: str = "/dicom-web/studies",
          token: str | None = TOKEN, content_type: str | None = None) -> tuple[int, Any]:
    assert app.web is not None
    body_file = folder / "body.bin"
    body_file.write_bytes(body)
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    cmd = ["curl", "-s", "-o", str(folder / "answer.json"), "-w", "%{http_code}", "-X", "POST",
           "-H", f"Content-Type: {ctype}", "-H", "Accept: application/dicom+json",
           "--data-binary", f"@{body_file}", f"http://127.0.0.1:{app.web.port}{path}"]
    if token is not None:
        cmd[4:4] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    text = (folder / "answer.json").read_text()
    return int(out.stdout), json.loads(text) if text else None


def _reasons(answer: dict[str, Any]) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in answer.get(FAILED_SOP, {}).get("Value", [])]


class TestStowRs:
    """POST /dicom-web/studies feeds the spool and journal like C-STORE."""

    def test_two_instances_are_stored_and_referenced(self, app: Sidecar, tmp_path: Path) -> None:
        """Two good instances: 200, both in ReferencedSOPSequence, both journalled."""
        a, b = make_mr(seed=501), make_mr(seed=502)
        status, answer = _post(app, _body([_file(a, tmp_path), _file(b, tmp_path)]), tmp_path)
        assert status == 200, answer
        refs = [item[SOP_INSTANCE]["Value"][0] for item in answer[REFERENCED_SOP]["Value"]]
        assert refs == [str(a.SOPInstanceUID), str(b.SOPInstanceUID)]
        assert app.journal.has_instance(str(a.SOPInstanceUID)) and app.journal.has_instance(str(b.SOPInstanceUID))

    def test_one_good_one_broken_is_202_with_the_failure_reason(self, app: Sidecar, tmp_path: Path) -> None:
        """A good instance and a truncated one: 202; the broken one fails with C000."""
        good, broken = make_mr(seed=503), make_mr(seed=504)
        data = _file(broken, tmp_path)
        status, answer = _post(app, _body([_file(good, tmp_path), data[: len(data) // 2]]), tmp_path)
        assert status == 202, answer
        assert _reasons(answer) == [StoreStatus.CANNOT_UNDERSTAND]
        assert not app.journal.has_instance(str(broken.SOPInstanceUID))

    def test_other_content_under_a_stored_uid_is_409_duplicate(self, app: Sidecar, tmp_path: Path) -> None:
        """Same SOP Instance UID, other pixels, sent by STOW after C-STORE's policy: 409, reason 0111."""
        first = make_mr(seed=505)
        assert _post(app, _body([_file(first, tmp_path)]), tmp_path)[0] == 200
        other = make_mr(seed=506, study_uid=str(first.StudyInstanceUID), series_uid=str(first.SeriesInstanceUID),
                        sop_uid=str(first.SOPInstanceUID))
        status, answer = _post(app, _body([_file(other, tmp_path)]), tmp_path)
        assert status == 409 and _reasons(answer) == [StoreStatus.DUPLICATE_SOP_INSTANCE]

    def test_instance_of_another_study_than_the_url_is_refused(self, app: Sidecar, tmp_path: Path) -> None:
        """POST /studies/{study} with an instance of another study: 409, reason A900, not kept."""
        ds = make_mr(seed=507)
        status, answer = _post(app, _body([_file(ds, tmp_path)]), tmp_path,
                               path="/dicom-web/studies/1.2.826.0.1.3680043.9.9999.77")
        assert status == 409 and _reasons(answer) == [StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS]
        assert not app.journal.has_instance(str(ds.SOPInstanceUID))

    def test_instance_over_the_limit_is_413(self, app: Sidecar, tmp_path: Path) -> None:
        """An instance over limits.max_instance_bytes (256 KiB): 413, reason A700, nothing kept."""
        ds = make_mr(seed=508, size=512)
        status, answer = _post(app, _body([_file(ds, tmp_path)]), tmp_path)
        assert status == 413 and _reasons(answer) == [StoreStatus.REFUSED_OUT_OF_RESOURCES]
        assert not app.journal.has_instance(str(ds.SOPInstanceUID))
        assert not list(app.spool.root.glob(".incoming-*"))

    def test_without_the_token_is_401(self, app: Sidecar, tmp_path: Path) -> None:
        """No Authorization header: 401 and nothing read."""
        ds = make_mr(seed=509)
        status, _ = _post(app, _body([_file(ds, tmp_path)]), tmp_path, token=None)
        assert status == 401
        assert not app.journal.has_instance(str(ds.SOPInstanceUID))

    def test_another_media_type_is_415(self, app: Sidecar, tmp_path: Path) -> None:
        """multipart/form-data is not STOW-RS: 415."""
        status, _ = _post(app, b"x", tmp_path, content_type="multipart/form-data; boundary=x")
        assert status == 415

    def test_garbage_body_is_400_or_409_never_a_crash(self, app: Sidecar, tmp_path: Path) -> None:
        """A body without the boundary: 400 (no DICOM part); the service goes on."""
        status, _ = _post(app, b"not a multipart body at all", tmp_path)
        assert status == 400
        ok, _ = _post(app, _body([_file(make_mr(seed=510), tmp_path)]), tmp_path)
        assert ok == 200
