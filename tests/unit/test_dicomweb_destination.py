"""STOW-RS transport (sidecar/egress/stow.py) against httpx's MockTransport, and its settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path

import httpx
import pytest

from sidecar.dicom.status import StoreStatus
from sidecar.egress.stow import DicomwebTransport
from sidecar.egress.transport import StoreTransport, make_transport
from sidecar.errors import ConfigError, DeliveryError
from sidecar.settings import DicomwebDestination, load_settings
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.sidecar import write_config

URL = "http://127.0.0.1:8042/dicom-web"
Handler = Callable[[httpx.Request], httpx.Response]


def _dest(**kw: object) -> DicomwebDestination:
    return DicomwebDestination.model_validate({"kind": "dicomweb", "name": "web", "url": URL, **kw})


def _transport(handler: Handler, **kw: object) -> DicomwebTransport:
    return DicomwebTransport(_dest(**kw), client=httpx.Client(transport=httpx.MockTransport(handler)))


def _files(tmp_path: Path, n: int, seed: int = 1) -> list[str]:
    paths = []
    for ds in make_mr_series(n, seed=seed):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def _uids(request: httpx.Request) -> list[str]:
    """SOP Instance UIDs of the parts of a multipart/related STOW-RS body."""
    from io import BytesIO

    from pydicom import dcmread

    msg = message_from_bytes(b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
                             + request.content)
    uids = []
    for part in msg.get_payload():
        assert not isinstance(part, str)
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        uids.append(str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID))
    return uids


def _answer(stored: list[str], failed: dict[str, int] | None = None, status: int = 200) -> httpx.Response:
    doc: dict[str, object] = {}
    if stored:
        doc["00081199"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in stored]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [r]}}
            for u, r in failed.items()]}
    return httpx.Response(status, content=json.dumps(doc), headers={"Content-Type": "application/dicom+json"})


class TestDicomwebTransport:
    def test_is_a_store_transport_made_for_a_dicomweb_destination(self) -> None:
        """make_transport gives a DicomwebTransport for kind dicomweb, and it fits the seam."""
        t = make_transport(_dest(), "SIDECAR")
        assert isinstance(t, DicomwebTransport) and isinstance(t, StoreTransport)

    def test_posts_every_file_as_one_multipart_request_with_the_auth_header(self, tmp_path: Path) -> None:
        """One POST to {url}/studies, multipart/related application/dicom, auth header, JSON accepted."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return _answer(_uids(request))

        paths = _files(tmp_path, 3)
        outcomes = _transport(handler, auth="Bearer t0ken").send(paths)
        assert [o.ok for o in outcomes] == [True, True, True]
        (request,) = seen
        assert request.method == "POST" and str(request.url) == f"{URL}/studies"
        assert request.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
        assert request.headers["authorization"] == "Bearer t0ken"
        assert request.headers["accept"] == "application/dicom+json"
        assert len(_uids(request)) == 3

    def test_batches_split_at_max_request_bytes(self, tmp_path: Path) -> None:
        """Files over max_request_bytes together go in several POSTs, every file in exactly one."""
        posted: list[list[str]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            posted.append(_uids(request))
            return _answer(posted[-1])

        paths = _files(tmp_path, 3)
        size = Path(paths[0]).stat().st_size
        outcomes = _transport(handler, max_request_bytes=size + 1).send(paths)
        assert all(o.ok for o in outcomes)
        assert [len(p) for p in posted] == [1, 1, 1]

    def test_per_instance_failure_reasons_use_the_c_store_retry_policy(self, tmp_path: Path) -> None:
        """202: stored one delivered, out-of-resources retried, cannot-understand failed for good."""
        paths = _files(tmp_path, 3)

        def handler(request: httpx.Request) -> httpx.Response:
            a, b, c = _uids(request)
            return _answer([a], {b: StoreStatus.REFUSED_OUT_OF_RESOURCES, c: StoreStatus.CANNOT_UNDERSTAND}, 202)

        ok, busy, bad = _transport(handler).send(paths)
        assert ok.ok
        assert not busy.ok and busy.retryable
        assert not bad.ok and not bad.retryable

    def test_an_instance_not_named_in_a_202_is_retried(self, tmp_path: Path) -> None:
        """A partial answer that leaves a file out does not count it as stored."""
        paths = _files(tmp_path, 2)
        first, missing = _transport(lambda r: _answer(_uids(r)[:1], status=202)).send(paths)
        assert first.ok and not missing.ok and missing.retryable

    @pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (429, True), (408, True),
                                                       (401, False), (403, False), (400, False), (415, False)])
    def test_http_status_without_answers(self, tmp_path: Path, status: int, retryable: bool) -> None:
        """Server errors and throttling are retried; other client errors are not (configuration)."""
        (outcome,) = _transport(lambda r: httpx.Response(status)).send(_files(tmp_path, 1))
        assert not outcome.ok and outcome.retryable is retryable and f"HTTP {status}" in outcome.error

    def test_a_200_without_a_body_counts_as_stored(self, tmp_path: Path) -> None:
        """PS3.18: 200 means every instance was stored, whether or not the answer lists them."""
        (outcome,) = _transport(lambda r: httpx.Response(200)).send(_files(tmp_path, 1))
        assert outcome.ok

    def test_connection_errors_are_retried(self, tmp_path: Path) -> None:
        """An unreachable server (connect error) leaves every file to retry."""
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        outcomes = _transport(handler).send(_files(tmp_path, 2))
        assert all(not o.ok and o.retryable and "ConnectError" in o.error for o in outcomes)

    def test_an_unreadable_file_fails_alone(self, tmp_path: Path) -> None:
        """A file that is not DICOM fails (not retryable); the others are still sent."""
        junk = tmp_path / "junk.dcm"
        junk.write_bytes(b"not dicom")
        good = _files(tmp_path, 1)
        bad, ok = _transport(lambda r: _answer(_uids(r))).send([str(junk), *good])
        assert not bad.ok and not bad.retryable and "cannot read" in bad.error
        assert ok.ok

    def test_echo_queries_studies_and_raises_on_refusal(self) -> None:
        """echo is a QIDO-RS GET {url}/studies?limit=1; a 401 raises DeliveryError naming the status."""
        paths: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            paths.append(str(request.url))
            return httpx.Response(401 if "Authorization" not in request.headers else 200, content=b"[]")

        _transport(handler, auth="Basic eA==").echo()
        with pytest.raises(DeliveryError, match="HTTP 401"):
            _transport(handler).echo()
        assert paths[0] == f"{URL}/studies?limit=1"


class TestDicomwebSettings:
    def _load(self, tmp_path: Path, dest: dict[str, object], env: dict[str, str] | None = None) -> DicomwebDestination:
        conf = write_config(tmp_path / "conf", destinations=[{"kind": "dicomweb", "name": "web", "url": URL, **dest}])
        (loaded,) = load_settings(conf, env=env or {}).service.destinations
        assert isinstance(loaded, DicomwebDestination)
        return loaded

    def test_auth_env_is_read_once_at_start_up(self, tmp_path: Path) -> None:
        """auth_env names a variable; its value becomes the (secret) header value."""
        dest = self._load(tmp_path, {"auth_env": "STOW_TOKEN"}, env={"STOW_TOKEN": "Bearer abc"})
        assert dest.auth is not None and dest.auth.get_secret_value() == "Bearer abc"
        assert "abc" not in repr(dest)

    def test_missing_auth_env_stops_the_start_naming_the_key(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"destinations\.0\.auth_env.*STOW_TOKEN"):
            self._load(tmp_path, {"auth_env": "STOW_TOKEN"})

    @pytest.mark.parametrize("bad", [
        {"auth": "x", "auth_env": "Y"},  # two sources
        {"url": "ftp://pacs/dicom-web"},  # not http(s)
        {"tls": {}},  # TLS on an http url
        {"url": "https://pacs/dicom-web", "tls": {"server_name": "x"}},  # DICOM-only key
    ])
    def test_invalid_destinations_are_refused(self, tmp_path: Path, bad: dict[str, object]) -> None:
        with pytest.raises(ConfigError, match=r"destinations\.0"):
            self._load(tmp_path, bad)
