"""DICOMweb out: the sidecar's results reach Orthanc's DICOMweb plugin over STOW-RS (issue 16).

Orthanc (Debian `orthanc` + `orthanc-dicomweb`) runs on loopback with HTTP basic authentication.
A sidecar whose only destination is `kind: dicomweb` (credentials from the environment, as a
deployment would keep them) receives an MR series over dcmtk storescu; its SR must arrive in
Orthanc through the outbox, which marks it sent. STOW-RS over TLS is checked against Orthanc
behind an https front with a certificate from a test CA (the `ca_file` of the destination).
"""

from __future__ import annotations

import base64
import http.client
import io
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from pydicom import dcmread

from sidecar.app import Sidecar
from sidecar.egress.stow import DicomwebTransport
from sidecar.errors import DeliveryError
from sidecar.settings import DicomwebDestination
from tests.helpers.dcmtk import storescu
from tests.helpers.dicom_factory import make_mr_series
from tests.helpers.orthanc import Orthanc
from tests.helpers.sidecar import running_sidecar, write_config
from tests.integration.test_tls import OPENSSL, _ca, _leaf

pytestmark = pytest.mark.e2e

USER, PASSWORD = "sidecar", "stow-test-password"  # a test secret
AUTH_ENV = "SIDECAR_TEST_STOW_AUTH"
RESULT_TIMEOUT_S = 60.0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _orthanc(**extra: object) -> Orthanc:
    return Orthanc(dicomweb=True, extra_config={
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, **extra})


@dataclass(frozen=True)
class Loop:
    orthanc: Orthanc
    app: Sidecar


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """Orthanc with DICOMweb and basic auth; a sidecar whose destination is its STOW-RS root."""
    orthanc = _orthanc()
    cfg = write_config(
        tmp_path_factory.mktemp("stow") / "conf",
        destinations=[{"kind": "dicomweb", "name": "orthanc-web", "url": orthanc.dicomweb_url,
                       "auth_env": AUTH_ENV}],
        sender={"poll_s": 0.05, "echo_on_start": True, "max_attempts": 2, "backoff_initial_s": 0.2},
    )
    with orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv(AUTH_ENV, _basic(USER, PASSWORD))
        with running_sidecar(cfg) as app:
            yield Loop(orthanc, app)


def _wait_sent(app: Sidecar, series_uid: str) -> list[str]:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while time.monotonic() < deadline:
        items = app.journal.outbox(series_uid)
        if items and all(i.state in ("sent", "dead") for i in items):
            assert all(i.state == "sent" for i in items), [(i.state, i.last_error) for i in items]
            return [i.sop_instance_uid for i in items]
        time.sleep(0.05)
    raise TimeoutError(f"the result was not sent in {RESULT_TIMEOUT_S} s: {app.journal.outbox(series_uid)}")


class TestStowToOrthanc:
    def test_sr_goes_out_over_stow_rs_and_the_outbox_marks_it_sent(self, loop: Loop, tmp_path: Path) -> None:
        """An MR series in over C-STORE comes back to Orthanc as an SR over STOW-RS, marked sent."""
        paths = []
        for ds in make_mr_series(3, seed=161):
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        series_uid = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        done = storescu(paths, loop.app.port, called_aet=loop.app.settings.service.ae_title)
        assert done.returncode == 0, done.stderr[-500:]
        (sr_uid,) = _wait_sent(loop.app, series_uid)
        (sr_id,) = loop.orthanc.wait_for_instance(sr_uid, timeout_s=5.0)
        assert loop.orthanc.instance_tags(sr_id)["Modality"] == "SR"

    def test_stow_rs_answers_200_with_the_instance_in_referenced_sop_sequence(
        self, loop: Loop, tmp_path: Path,
    ) -> None:
        """What the transport relies on: Orthanc's STOW-RS answer names the stored SR (0008,1199)."""
        (sr_id, *_) = loop.orthanc.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}}) \
            or pytest.fail("no SR in Orthanc: the first test did not run or failed")
        data = loop.orthanc.instance_file(sr_id)
        uid = str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b0--\r\n"
        rsp = httpx.post(f"{loop.orthanc.dicomweb_url}/studies", content=body, auth=(USER, PASSWORD),
                         headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0',
                                  "Accept": "application/dicom+json"}, trust_env=False)
        assert rsp.status_code == 200
        referenced = rsp.json()["00081199"]["Value"]
        assert [r["00081155"]["Value"][0] for r in referenced] == [uid]

    def test_wrong_credentials_fail_without_retry(self, loop: Loop) -> None:
        """HTTP 401 is configuration, not an outage: the file fails at once (dead letter), not retried."""
        (sr_id, *_) = loop.orthanc.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})
        path = Path(loop.orthanc.workdir) / "resend.dcm"
        path.write_bytes(loop.orthanc.instance_file(sr_id))
        dest = DicomwebDestination(kind="dicomweb", name="bad-auth", url=loop.orthanc.dicomweb_url,
                                   auth=SecretStr(_basic(USER, "wrong")))
        transport = DicomwebTransport(dest)
        try:
            (outcome,) = transport.send([str(path)])
            with pytest.raises(DeliveryError, match="HTTP 401"):
                transport.echo()
        finally:
            transport.close()
        assert not outcome.ok and not outcome.retryable and "HTTP 401" in outcome.error


class _TlsFront:
    """An https front for Orthanc's http port (Debian's Orthanc 1.10 crashes serving https itself):
    Python's ssl with a certificate from a test CA, forwarding each request to Orthanc."""

    def __init__(self, orthanc: Orthanc, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        """`client_ca`: require a client certificate signed by it (mutual TLS)."""
        upstream = orthanc.http_port

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    rsp = conn.getresponse()
                    data = rsp.read()
                finally:
                    conn.close()
                self.send_response(rsp.status)
                for k, v in rsp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(client_ca))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclass(frozen=True)
class HttpsOrthanc:
    orthanc: Orthanc
    url: str  # the https front, server certificate only
    mtls_url: str  # the https front that requires a client certificate
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def https_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsOrthanc]:
    """Orthanc's DICOMweb behind two https fronts with certificates from a test CA."""
    if OPENSSL is None:
        pytest.fail("the openssl CLI is needed to make the test PKI (Debian package 'openssl')")
    folder = tmp_path_factory.mktemp("stow-pki")
    ca, _ = _ca(folder, "stow-ca")
    cert, key = _leaf(folder, "orthanc", "stow-ca",
                      "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client_cert, client_key = _leaf(folder, "sidecar", "stow-ca", "extendedKeyUsage=clientAuth\n")
    with _orthanc() as orthanc:
        front = _TlsFront(orthanc, cert, key)
        mtls = _TlsFront(orthanc, cert, key, client_ca=ca)
        try:
            yield HttpsOrthanc(orthanc, front.url, mtls.url, ca, client_cert, client_key)
        finally:
            front.stop()
            mtls.stop()


class TestStowOverTls:
    def test_stow_rs_over_https_verified_against_the_ca_file(
        self, https_orthanc: HttpsOrthanc, tmp_path: Path,
    ) -> None:
        """With the destination's ca_file the https server is trusted and the instance is stored."""
        orthanc, url, ca = https_orthanc.orthanc, https_orthanc.url, https_orthanc.ca
        dest = DicomwebDestination.model_validate({"kind": "dicomweb", "name": "tls", "url": url,
                                                   "auth": _basic(USER, PASSWORD), "tls": {"ca_file": ca}})
        (mr,) = make_mr_series(1, seed=162)
        path = tmp_path / "mr.dcm"
        mr.save_as(path, enforce_file_format=True)
        transport = DicomwebTransport(dest)
        try:
            transport.echo()
            (outcome,) = transport.send([str(path)])
        finally:
            transport.close()
        assert outcome.ok, outcome.error
        assert orthanc.find_instances(str(mr.SOPInstanceUID))

    def test_untrusted_server_certificate_is_refused(
        self, https_orthanc: HttpsOrthanc, tmp_path: Path,
    ) -> None:
        """Without the CA (system trust only) the handshake fails: nothing is stored, the send is retried."""
        orthanc, url = https_orthanc.orthanc, https_orthanc.url
        (mr,) = make_mr_series(1, seed=163)
        path = tmp_path / "mr.dcm"
        mr.save_as(path, enforce_file_format=True)
        dest = DicomwebDestination.model_validate({"kind": "dicomweb", "name": "tls-untrusted", "url": url, "tls": {}})
        transport = DicomwebTransport(dest)
        try:
            with pytest.raises(DeliveryError, match="cannot reach"):
                transport.echo()
            (outcome,) = transport.send([str(path)])
        finally:
            transport.close()
        assert not outcome.ok and outcome.retryable and "ConnectError" in outcome.error
        assert not orthanc.find_instances(str(mr.SOPInstanceUID))


    @pytest.mark.parametrize("with_client_cert", [True, False])
    def test_mutual_tls_needs_the_client_certificate(
        self, https_orthanc: HttpsOrthanc, tmp_path: Path, with_client_cert: bool,
    ) -> None:
        """A server that requires a client certificate stores with cert_file/key_file; without: retried."""
        h = https_orthanc
        tls: dict[str, object] = {"ca_file": h.ca}
        if with_client_cert:
            tls.update(cert_file=h.client_cert, key_file=h.client_key)
        dest = DicomwebDestination.model_validate({"kind": "dicomweb", "name": "mtls", "url": h.mtls_url,
                                                   "auth": _basic(USER, PASSWORD), "tls": tls})
        (mr,) = make_mr_series(1, seed=164 + int(with_client_cert))
        path = tmp_path / "mr.dcm"
        mr.save_as(path, enforce_file_format=True)
        transport = DicomwebTransport(dest)
        try:
            (outcome,) = transport.send([str(path)])
        finally:
            transport.close()
        if with_client_cert:
            assert outcome.ok, outcome.error
            assert h.orthanc.find_instances(str(mr.SOPInstanceUID))
        else:
            assert not outcome.ok and outcome.retryable
            assert not h.orthanc.find_instances(str(mr.SOPInstanceUID))
