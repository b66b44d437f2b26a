"""Duplicates decided, never silent; a data set must match its presentation context; retired US
classes that older consoles send are kept and routed (issue 14; docs/conformance.md 1.1, 1.2.1).

Real listener (the whole sidecar, in this process) and a real pynetdicom SCU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from models.us.frontend import locate
from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from sidecar.ingest.listener import RETIRED_STORAGE
from tests.helpers.dicom_factory import fake_uid, make_mr, make_us
from tests.helpers.raw_peer import associate_rq, command_status, connect, p_data, read_pdu, store_command
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = [pytest.mark.reliability]

REPO = Path(__file__).resolve().parents[2]
US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    cfg = write_config(tmp_path_factory.mktemp("front-door-dup") / "conf", routes=[])
    with running_sidecar(cfg) as sidecar:
        yield sidecar


def _store(app: Sidecar, item: Dataset | Path, *contexts: str) -> Dataset:
    ae = AE(ae_title="DUPTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in contexts or (MRImageStorage,):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", app.port, ae_title="SIDECAR")
    assert assoc.is_established
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)  # a file goes byte for byte
    try:
        return assoc.send_c_store(item)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()


def _spooled(app: Sidecar, uid: str) -> list[Path]:
    return list(app.spool.root.rglob(f"{uid}.dcm"))


class TestDuplicates:
    """The same SOP Instance UID again: kept once, or refused with a named status."""

    def test_same_uid_same_bytes_is_success_and_kept_once(self, app: Sidecar) -> None:
        """A resend of the very same instance is acknowledged and not stored twice."""
        ds = make_mr(seed=401)
        assert _store(app, ds).Status == StoreStatus.SUCCESS
        first = _spooled(app, str(ds.SOPInstanceUID))
        assert _store(app, ds).Status == StoreStatus.SUCCESS
        assert _spooled(app, str(ds.SOPInstanceUID)) == first and len(first) == 1
        assert len(app.journal.instances(str(ds.SeriesInstanceUID))) == 1

    def test_same_uid_other_pixels_is_duplicate_and_the_first_is_kept(self, app: Sidecar) -> None:
        """Other content under a UID already held: 0111 'other content'; the stored file is unchanged."""
        ds = make_mr(seed=402)
        assert _store(app, ds).Status == StoreStatus.SUCCESS
        (kept,) = _spooled(app, str(ds.SOPInstanceUID))
        before = kept.read_bytes()
        changed = make_mr(seed=403, study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                          sop_uid=str(ds.SOPInstanceUID))
        assert changed.PixelData != ds.PixelData
        rsp = _store(app, changed)
        assert rsp.Status == StoreStatus.DUPLICATE_SOP_INSTANCE
        assert "other content" in rsp.ErrorComment
        assert kept.read_bytes() == before

    def test_same_uid_in_another_series_is_refused_and_no_series_is_made(self, app: Sidecar) -> None:
        """A UID reused in another series: 0111 'another series'; that series never appears."""
        ds = make_mr(seed=404)
        assert _store(app, ds).Status == StoreStatus.SUCCESS
        other_series = fake_uid("other-series")
        moved = make_mr(seed=404, study_uid=str(ds.StudyInstanceUID), series_uid=other_series,
                        sop_uid=str(ds.SOPInstanceUID))
        rsp = _store(app, moved)
        assert rsp.Status == StoreStatus.DUPLICATE_SOP_INSTANCE
        assert "another series" in rsp.ErrorComment
        assert app.journal.series(other_series) is None


class TestContextMatch:
    """The data set's SOP Class is checked against the negotiated abstract syntax."""

    def test_mr_data_set_on_a_ct_context_is_refused_naming_both(self, app: Sidecar) -> None:
        """An MR data set sent on a CT Image Storage context: A900 naming MR and CT, nothing kept."""
        ds = make_mr(seed=405)
        with connect(app.port) as sock:  # a raw peer: pynetdicom's SCU would not send it
            sock.sendall(associate_rq(CTImageStorage, ExplicitVRLittleEndian))
            pdu = read_pdu(sock)
            assert pdu is not None and pdu[0] == 0x02
            sock.sendall(p_data(1, 0x03, store_command(CTImageStorage, str(ds.SOPInstanceUID))))
            sock.sendall(p_data(1, 0x02, _encoded(ds)))
            pdu = read_pdu(sock)
        assert pdu is not None and pdu[0] == 0x04, f"expected a C-STORE-RSP, got {pdu}"
        rsp = command_status(pdu[1])
        assert rsp.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "MR Image Storage" in rsp.ErrorComment and "CT Image Storage" in rsp.ErrorComment
        assert not app.journal.has_instance(str(ds.SOPInstanceUID))


class TestRetiredClasses:
    """Older ultrasound and echo consoles' retired storage classes."""

    @pytest.mark.parametrize("sop_class", sorted(RETIRED_STORAGE))
    def test_retired_us_class_is_stored(self, app: Sidecar, sop_class: str) -> None:
        """A retired US SOP class is accepted at association and its instance acknowledged."""
        ds = make_us(seed=406 + int(sop_class.rsplit(".", 1)[1]))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        assert _store(app, ds, sop_class).Status == StoreStatus.SUCCESS
        assert app.journal.has_instance(str(ds.SOPInstanceUID))

    def test_retired_us_image_is_routed_and_read_by_the_us_front_end(self, app: Sidecar) -> None:
        """`sidecar route explain` on a stored retired-class US image names a US rule; the front end reads it."""
        ds = make_us(seed=407)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(US_RETIRED)
        ds.SeriesDescription = "MTP1 gout"
        assert _store(app, ds, US_RETIRED).Status == StoreStatus.SUCCESS
        (path,) = _spooled(app, str(ds.SOPInstanceUID))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", "sidecar", "route", "explain", str(path)], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        assert "Result: rule 'gout-mtp1-by-description' -> model gout_mtp1" in out.stdout
        stored = pydicom.dcmread(path)
        layout = locate(stored, np.asarray(stored.pixel_array))
        assert layout is not None


def _encoded(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, as a peer sends it."""
    data = encode(ds, False, True)
    assert data is not None, "pydicom could not encode the test data set"
    return bytes(data)
