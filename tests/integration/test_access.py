"""The allow-list at association: calling AE titles, optionally tied to source addresses.

A stranger gets A-ASSOCIATE-RJ (rejected-permanent, service-user, "calling AE title not
recognized", PS3.8 9.3.4) before any data, and an `association_rejected` line naming the
calling AE and the peer address. Clients bind to 127.0.0.2 to be a different loopback source.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest
import structlog
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification

from sidecar.app import Sidecar
from sidecar.errors import ConfigError
from sidecar.settings import Access, load_settings
from tests.helpers.dcmtk import echoscu
from tests.helpers.dicom_factory import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, make_mr
from tests.helpers.expect import present
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
OTHER_SOURCE = "127.0.0.2"


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


ALLOWED = [
    {"ae_title": "LOCALONLY", "addresses": ["127.0.0.1"]},
    {"ae_title": "OTHERHOST", "addresses": [f"{OTHER_SOURCE}/32", "10.0.0.0/8"]},
    {"ae_title": "ANYWHERE"},
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    config = write_config(tmp_path_factory.mktemp("access") / "conf", routes=[],
                          access={"calling_ae_titles": ["LEGACY"], "allowed": ALLOWED})
    with running_sidecar(config) as app:
        yield app


def _associate(app: Sidecar, ae_title: str, source: str = HOST, called: str = "SIDECAR") -> Association:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    return ae.associate(HOST, app.port, ae_title=called, bind_address=(source, 0))


def _assert_rejected_as_unknown_caller(assoc: Association) -> None:
    assert assoc.is_rejected and not assoc.is_established
    rj = present(assoc.acceptor.primitive)
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03), (
        "expected rejected-permanent, service-user, calling AE title not recognized")


def _assert_accepted(assoc: Association) -> None:
    assert assoc.is_established, "an allowed caller was not admitted"
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


class TestAllowListByAeTitle:
    """Callers are admitted by calling AE title."""

    @pytest.mark.parametrize("ae_title", ["LEGACY", "ANYWHERE", "LOCALONLY"])
    def test_listed_ae_title_is_admitted(self, guarded: Sidecar, ae_title: str) -> None:
        """Titles from calling_ae_titles and from allowed entries (matching source) associate."""
        _assert_accepted(_associate(guarded, ae_title))

    def test_stranger_is_rejected_with_the_reason_and_logged_without_phi(self, guarded: Sidecar) -> None:
        """An unknown AE title gets A-ASSOCIATE-RJ 1/1/3 and an association_rejected line (AE, peer)."""
        with structlog.testing.capture_logs() as logs:
            assoc = _associate(guarded, "STRANGER")
        _assert_rejected_as_unknown_caller(assoc)
        lines = [e for e in logs if e["event"] == "association_rejected"]
        assert lines, logs
        assert lines[0]["calling_ae"] == "STRANGER" and lines[0]["peer"] == HOST
        assert lines[0]["log_level"] == "warning"
        assert FAKE_PATIENT_NAME not in repr(logs) and FAKE_PATIENT_ID not in repr(logs)
        _assert_accepted(_associate(guarded, "ANYWHERE"))

    def test_rejected_stranger_cannot_store(self, guarded: Sidecar) -> None:
        """Nothing a stranger sends is kept: the association never exists."""
        assoc = _associate(guarded, "STRANGER")
        assert not assoc.is_established
        with pytest.raises(RuntimeError):
            assoc.send_c_store(make_mr(seed=401))

    def test_dcmtk_echoscu_from_a_stranger_is_rejected(self, guarded: Sidecar) -> None:
        """A real dcmtk client with an unknown title fails; with an allowed one it succeeds."""
        assert echoscu(guarded.port, aet="STRANGER", called_aet="SIDECAR").returncode != 0
        assert echoscu(guarded.port, aet="ANYWHERE", called_aet="SIDECAR").returncode == 0

    def test_wrong_called_ae_title_is_rejected(self, guarded: Sidecar) -> None:
        """An allowed caller that names another called AE title is rejected with diagnostic 7."""
        assoc = _associate(guarded, "ANYWHERE", called="NOTME")
        assert assoc.is_rejected
        assert present(assoc.acceptor.primitive).diagnostic == 0x07


@pytest.mark.skipif(not _can_bind(OTHER_SOURCE), reason=f"cannot bind a client to {OTHER_SOURCE}")
class TestAllowListBySourceAddress:
    """Entries with addresses admit their AE title only from those sources."""

    def test_local_only_title_is_rejected_from_another_source(self, guarded: Sidecar) -> None:
        """LOCALONLY is allowed from 127.0.0.1, not from 127.0.0.2."""
        _assert_accepted(_associate(guarded, "LOCALONLY", HOST))
        with structlog.testing.capture_logs() as logs:
            assoc = _associate(guarded, "LOCALONLY", OTHER_SOURCE)
        _assert_rejected_as_unknown_caller(assoc)
        assert any(e["event"] == "association_rejected" and e["peer"] == OTHER_SOURCE for e in logs)

    def test_network_entry_admits_its_source_only(self, guarded: Sidecar) -> None:
        """OTHERHOST (127.0.0.2/32, 10/8) is admitted from 127.0.0.2 and rejected from 127.0.0.1."""
        _assert_accepted(_associate(guarded, "OTHERHOST", OTHER_SOURCE))
        _assert_rejected_as_unknown_caller(_associate(guarded, "OTHERHOST", HOST))

    def test_titles_without_addresses_are_admitted_from_any_source(self, guarded: Sidecar) -> None:
        """ANYWHERE and LEGACY (calling_ae_titles) associate from 127.0.0.2 too."""
        _assert_accepted(_associate(guarded, "ANYWHERE", OTHER_SOURCE))
        _assert_accepted(_associate(guarded, "LEGACY", OTHER_SOURCE))


class TestAccessSettings:
    def test_empty_lists_admit_anyone(self) -> None:
        """No calling_ae_titles and no allowed entries: unrestricted."""
        assert Access().admits("WHOEVER", "192.0.2.1")

    def test_ipv6_and_networks(self) -> None:
        """Entries accept IPv6 and networks; an unparsable peer address is not admitted."""
        access = Access.model_validate({"allowed": [{"ae_title": "V6", "addresses": ["::1", "fd00::/8"]}]})
        assert access.admits("V6", "::1") and access.admits("V6", "fd00::42")
        assert not access.admits("V6", "127.0.0.1") and not access.admits("V6", "not-an-address")

    def test_bad_network_is_a_config_error_naming_the_key(self, tmp_path) -> None:
        """A malformed address stops the start with access.allowed.0.addresses named."""
        config = write_config(tmp_path / "conf", routes=[],
                              access={"allowed": [{"ae_title": "X", "addresses": ["10.0.0.300"]}]})
        with pytest.raises(ConfigError, match=r"access\.allowed\.0\.addresses"):
            load_settings(config)

    def test_unrestricted_sidecar_admits_any_title(self, tmp_path) -> None:
        """Without an allow-list any calling AE title associates."""
        with running_sidecar(write_config(tmp_path / "conf", routes=[])) as app:
            _assert_accepted(_associate(app, "WHOEVER"))


def _get(port: int, host_header: str) -> int:
    """GET /healthz from 127.0.0.1 with the given Host header; the HTTP status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/healthz", skip_host=True)
        conn.putheader("Host", host_header)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


class TestWebHostHeader:
    """The web side port answers only Host names it is configured for (DNS rebinding guard)."""

    @pytest.fixture
    def web(self, tmp_path) -> Iterator[Sidecar]:
        cfg = write_config(tmp_path / "conf", routes=[], web={"enabled": True, "port": 0})
        with running_sidecar(cfg) as app:
            yield app

    @pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]"])
    def test_loopback_names_are_answered(self, web: Sidecar, name: str) -> None:
        """Loopback names (with the port, as browsers send them) get the page."""
        assert web.web is not None
        assert _get(web.web.port, f"{name}:{web.web.port}") == 200

    @pytest.mark.parametrize("name", ["evil.example", "attacker.example:8080", "127.0.0.1.nip.io"])
    def test_other_host_names_are_refused(self, web: Sidecar, name: str) -> None:
        """A rebinding page's Host (another name resolving to us) gets 400."""
        assert web.web is not None
        assert _get(web.web.port, name) == 400

    def test_configured_name_is_answered(self, tmp_path) -> None:
        """`web.allowed_hosts` replaces the loopback names."""
        cfg = write_config(tmp_path / "conf", routes=[],
                           web={"enabled": True, "port": 0, "allowed_hosts": ["sidecar.hospital.example"]})
        with running_sidecar(cfg) as app:
            assert app.web is not None
            assert _get(app.web.port, "sidecar.hospital.example") == 200
            assert _get(app.web.port, "localhost") == 400
            assert _get(app.web.port, "127.0.0.1") == 200  # the bound address itself stays answered
