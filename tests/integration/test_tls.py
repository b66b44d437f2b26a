"""DICOM TLS (PS3.15 B.9) on the listener and the sender, with a test CA made at test time.

The PKI (a CA, a server certificate for localhost/127.0.0.1, a client certificate, and a client
certificate from a second, untrusted CA) is generated with the `openssl` CLI into a temporary
folder. Peers: pynetdicom SCUs with an `ssl.SSLContext`, dcmtk `storescu +tls` as a real client,
dcmtk `storescp +tls` as a real TLS PACS for the sender.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from sidecar.egress.transport import DicomTransport
from sidecar.errors import ConfigError, DeliveryError
from sidecar.settings import DicomDestination, load_settings
from sidecar.tls import DestinationTls, client_context
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr, make_mr_series
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
OPENSSL = shutil.which("openssl")
KEY_PASSWORD = "correct-horse-battery"  # the encrypted client key's password (a test secret)


# -- a test PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    rogue_cert: Path  # signed by a CA the sidecar does not trust
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr[-2000:]}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


def _leaf(folder: Path, name: str, ca: str, ext: str) -> tuple[Path, Path]:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.fail("the openssl CLI is needed to make the test PKI (Debian package 'openssl')")
    folder = tmp_path_factory.mktemp("pki")
    ca, _ = _ca(folder, "test-ca")
    _ca(folder, "rogue-ca")
    server_cert, server_key = _leaf(folder, "server", "test-ca",
                                    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                    "extendedKeyUsage=serverAuth,clientAuth\n")
    client_cert, client_key = _leaf(folder, "client", "test-ca", "extendedKeyUsage=clientAuth\n")
    rogue_cert, rogue_key = _leaf(folder, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client-encrypted.key", cwd=folder)
    return Pki(folder, ca, server_cert, server_key, client_cert, client_key, folder / "client-encrypted.key",
               rogue_cert, rogue_key)


def _client_ctx(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _associate(port: int, tls: ssl.SSLContext | None, ae_title: str = "TLSCLIENT") -> Association:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    return ae.associate(HOST, port, ae_title="SIDECAR", tls_args=(tls, "localhost") if tls is not None else None)


def _store_over(port: int, tls: ssl.SSLContext, seed: int) -> tuple[str, int | None]:
    ds = make_mr(seed=seed)
    assoc = _associate(port, tls)
    assert assoc.is_established, "the TLS association was not established"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return str(ds.SOPInstanceUID), getattr(status, "Status", None)


def _listener_tls(pki: Pki, require_client_cert: bool) -> dict[str, object]:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "ca_file": str(pki.ca),
            "require_client_cert": require_client_cert}


@pytest.fixture(scope="module")
def mtls_sidecar(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """A sidecar whose listener requires a client certificate from the test CA."""
    config = write_config(tmp_path_factory.mktemp("mtls") / "conf", routes=[],
                          tls=_listener_tls(pki, require_client_cert=True))
    with running_sidecar(config) as app:
        yield app


# -- the listener -------------------------------------------------------------------------------


class TestListenerTls:
    """The listener speaks DICOM TLS and refuses clients that cannot prove who they are."""

    def test_client_with_a_certificate_stores_over_tls(self, pki: Pki, mtls_sidecar: Sidecar) -> None:
        """A pynetdicom SCU with a client certificate from the test CA stores an MR slice: Success, journalled."""
        uid, status = _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=301)
        assert status == StoreStatus.SUCCESS
        assert mtls_sidecar.journal.has_instance(uid)

    def test_negotiated_protocol_is_tls12_or_newer_with_an_aead_suite(self, pki: Pki, mtls_sidecar: Sidecar) -> None:
        """The handshake lands on TLS 1.2+ and an AEAD cipher (BCP 195)."""
        ctx = _client_ctx(pki, pki.client_cert, pki.client_key)
        with socket.create_connection((HOST, mtls_sidecar.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                version = tls.version()
                cipher = tls.cipher()
                compression = tls.compression()
        assert version in ("TLSv1.2", "TLSv1.3")
        assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])
        assert compression is None

    @pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
    def test_tls11_client_is_refused(self, pki: Pki, mtls_sidecar: Sidecar) -> None:
        """A client that offers at most TLS 1.1 cannot associate."""
        ctx = _client_ctx(pki, pki.client_cert, pki.client_key)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        assoc = _associate(mtls_sidecar.port, ctx)
        assert not assoc.is_established
        assert _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=302)[1] == 0

    def test_client_without_a_certificate_is_refused_when_mutual_tls_is_required(
        self, pki: Pki, mtls_sidecar: Sidecar,
    ) -> None:
        """No client certificate: no association, and the next good client is served."""
        assoc = _associate(mtls_sidecar.port, _client_ctx(pki))
        if assoc.is_established:  # TLS 1.3 reports the missing certificate after the handshake
            status = assoc.send_c_echo()
            assert getattr(status, "Status", None) is None, "a client without a certificate was served"
            assoc.abort()
        assert not assoc.is_established
        assert _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=303)[1] == 0

    def test_client_with_a_certificate_from_another_ca_is_refused(self, pki: Pki, mtls_sidecar: Sidecar) -> None:
        """A certificate the test CA did not sign gets no association."""
        assoc = _associate(mtls_sidecar.port, _client_ctx(pki, pki.rogue_cert, pki.rogue_key))
        if assoc.is_established:
            assert getattr(assoc.send_c_echo(), "Status", None) is None
            assoc.abort()
        assert not assoc.is_established
        assert _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=304)[1] == 0

    def test_plaintext_client_fails_cleanly_and_the_service_keeps_serving(
        self, pki: Pki, mtls_sidecar: Sidecar,
    ) -> None:
        """A plain DICOM association to the TLS port is not established; TLS clients go on."""
        assoc = _associate(mtls_sidecar.port, None)
        assert not assoc.is_established
        assert _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=305)[1] == 0

    def test_a_silent_connection_does_not_stall_other_clients(self, pki: Pki, mtls_sidecar: Sidecar) -> None:
        """A TCP connection that never says hello does not hold up the next TLS client (no handshake in accept)."""
        with socket.create_connection((HOST, mtls_sidecar.port), timeout=10):
            started = time.monotonic()
            _uid, status = _store_over(mtls_sidecar.port, _client_ctx(pki, pki.client_cert, pki.client_key), seed=306)
            assert status == StoreStatus.SUCCESS
            assert time.monotonic() - started < 5.0

    def test_dcmtk_storescu_stores_over_tls(self, pki: Pki, mtls_sidecar: Sidecar, tmp_path: Path) -> None:
        """dcmtk storescu with +tls (BCP 195 non-downgrading profile) stores a series over mutual TLS."""
        paths = []
        for ds in make_mr_series(3, seed=307):
            path = tmp_path / f"{int(ds.InstanceNumber)}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        done = storescu(paths, mtls_sidecar.port, aet="DCMTKTLS", called_aet="SIDECAR", extra_args=[
            "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)])
        assert done.returncode == 0, done.stderr[-2000:]
        for path in paths:
            assert mtls_sidecar.journal.has_instance(str(pydicom.dcmread(path).SOPInstanceUID))


class TestServerOnlyTls:
    def test_client_without_a_certificate_is_served_when_client_certs_are_optional(
        self, pki: Pki, tmp_path: Path,
    ) -> None:
        """require_client_cert false: server-authenticated TLS suffices."""
        config = write_config(tmp_path / "conf", routes=[], tls=_listener_tls(pki, require_client_cert=False))
        with running_sidecar(config) as app:
            uid, status = _store_over(app.port, _client_ctx(pki), seed=311)
            assert status == StoreStatus.SUCCESS
            assert app.journal.has_instance(uid)


# -- the sender ---------------------------------------------------------------------------------


class _TlsStoreSCP(StoreSCP):
    """StoreSCP whose readiness probe speaks TLS (dcmtk echoscu +tls)."""

    def __init__(self, pki: Pki, folder: Path) -> None:
        super().__init__(folder, ae_title="TLSPACS", extra_args=[
            "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)])
        self.pki = pki

    def answers_echo(self) -> bool:
        try:
            DicomTransport(self.destination(), "PROBE").echo()
        except DeliveryError:
            return False
        return True

    def destination(self, **tls: object) -> DicomDestination:
        conf = {"ca_file": self.pki.ca, "cert_file": self.pki.client_cert, "key_file": self.pki.client_key, **tls}
        return DicomDestination(name="tlspacs", host=HOST, port=self.port, ae_title=self.ae_title, timeout_s=10,
                                tls=DestinationTls.model_validate(conf))


class TestSenderTls:
    def test_results_reach_a_tls_pacs(self, pki: Pki, tmp_path: Path) -> None:
        """The sender delivers an SR over mutual TLS to dcmtk storescp +tls."""
        with _TlsStoreSCP(pki, tmp_path / "pacs") as pacs:
            dest = {"kind": "dicom", "name": "pacs", "host": HOST, "port": pacs.port, "ae_title": "TLSPACS",
                    "tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                            "key_file": str(pki.client_key)}}
            routes = [{"name": "mr", "model": "brightness", "mode": "series", "match": {"modality": ["MR"]},
                       "outputs": ["sr"], "destinations": ["pacs"], "quiet_s": 0.5, "expected_count": 2}]
            config = write_config(tmp_path / "conf", routes=routes, destinations=[dest])
            with running_sidecar(config) as app:
                ae = AE(ae_title="MODALITY")
                ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
                assoc = ae.associate(HOST, app.port, ae_title="SIDECAR")
                assert assoc.is_established
                for ds in make_mr_series(2, seed=321):
                    assert assoc.send_c_store(ds).Status == 0
                assoc.release()
                files = pacs.wait_for_files(1, timeout=20)
            sr = pydicom.dcmread(files[0])
            assert sr.Modality == "SR"

    def test_encrypted_client_key_is_opened_with_a_password_from_the_environment(
        self, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """key_password_env: the encrypted key loads, C-ECHO over mutual TLS succeeds."""
        monkeypatch.setenv("TEST_SIDECAR_KEY_PASSWORD", KEY_PASSWORD)
        with _TlsStoreSCP(pki, tmp_path / "pacs") as pacs:
            DicomTransport(pacs.destination(key_file=pki.client_key_encrypted,
                                            key_password_env="TEST_SIDECAR_KEY_PASSWORD"), "SIDECAR").echo()

    def test_pacs_certificate_from_an_untrusted_ca_is_not_trusted(self, pki: Pki, tmp_path: Path) -> None:
        """The sender verifies the PACS: against the rogue CA the handshake fails, a retryable DeliveryError."""
        with _TlsStoreSCP(pki, tmp_path / "pacs") as pacs:
            with pytest.raises(DeliveryError, match="TLS handshake failed"):
                DicomTransport(pacs.destination(ca_file=pki.folder / "rogue-ca.pem"), "SIDECAR").echo()

    def test_host_name_is_checked(self, pki: Pki, tmp_path: Path) -> None:
        """A server_name the certificate does not carry fails verification."""
        with _TlsStoreSCP(pki, tmp_path / "pacs") as pacs:
            with pytest.raises(DeliveryError):
                DicomTransport(pacs.destination(server_name="pacs.example.org"), "SIDECAR").echo()


# -- configuration --------------------------------------------------------------------------------


class TestTlsSettings:
    def test_missing_certificate_file_names_the_key(self, pki: Pki, tmp_path: Path) -> None:
        """A listener certificate that does not exist stops the start with the tls key named."""
        config = write_config(tmp_path / "conf", routes=[], tls={
            "cert_file": str(tmp_path / "nope.pem"), "key_file": str(pki.server_key)})
        with pytest.raises(ConfigError, match="tls"):
            load_settings(config)

    def test_wrong_key_password_names_the_destination_and_hides_the_password(
        self, pki: Pki, tmp_path: Path,
    ) -> None:
        """A wrong password from a file is a ConfigError on destinations.0.tls; the password is not in it."""
        secret = tmp_path / "password"
        secret.write_text("not-the-password\n")
        config = write_config(tmp_path / "conf", routes=[], destinations=[{
            "kind": "dicom", "name": "pacs", "host": HOST, "port": 104, "ae_title": "PACS",
            "tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key_encrypted), "key_password_file": str(secret)}}])
        with pytest.raises(ConfigError, match=r"destinations\.0\.tls") as err:
            load_settings(config)
        assert "not-the-password" not in str(err.value)

    def test_mutual_tls_without_a_ca_is_a_config_error(self, pki: Pki, tmp_path: Path) -> None:
        """require_client_cert without ca_file cannot work and is refused at load."""
        config = write_config(tmp_path / "conf", routes=[], tls={
            "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "require_client_cert": True})
        with pytest.raises(ConfigError, match="ca_file"):
            load_settings(config)

    def test_secrets_never_reach_the_log(self, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Starting a sidecar whose destination key needs a password logs nothing of it."""
        monkeypatch.setenv("TEST_SIDECAR_KEY_PASSWORD", KEY_PASSWORD)
        config = write_config(tmp_path / "conf", routes=[], destinations=[{
            "kind": "dicom", "name": "pacs", "host": HOST, "port": 104, "ae_title": "PACS",
            "tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key_encrypted), "key_password_env": "TEST_SIDECAR_KEY_PASSWORD"}}])
        with structlog.testing.capture_logs() as logs:
            with running_sidecar(config):
                pass
        assert logs and KEY_PASSWORD not in repr(logs)
        assert KEY_PASSWORD not in repr(load_settings(config))
        dest = load_settings(config).service.destinations[0]
        assert isinstance(dest, DicomDestination) and dest.tls is not None
        client_context(dest.tls)
