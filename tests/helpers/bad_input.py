"""Shared parts of the bad-input suites (tests/integration/test_bad_input_*.py and
tests/reliability/test_malformed.py): a running sidecar with what it acknowledged, crafted
instances sent byte for byte, and the raw-socket peer's PDUs (tests/helpers/raw_peer.py).

After every case the service must still answer C-ECHO, accept a good C-STORE, and still hold
every instance it acknowledged before (spool file and journal row): DESIGN.md "Bad input".
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.config
import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification

from sidecar.app import Sidecar
from sidecar.dicom.status import StoreStatus
from tests.helpers.dicom_factory import make_mr
from tests.helpers.raw_peer import (
    A_ABORT,
    HOST,
    RAW_AE,
    RAW_TIMEOUT_S,
    associate_rq as _raw_associate_rq,
    connect,
    item,
    p_data,
    read_pdu,
    recv_exactly,
    store_command,
)
from tests.helpers.sidecar import running_sidecar, write_config

SCU_AE = "BADINPUT"
MAX_INSTANCE_BYTES = 64 * 1024  # a 64x64 MR slice is ~9 KB; a 256x256 one ~130 KB
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1.1"  # not a storage class pynetdicom knows
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"  # a transfer syntax the sidecar does not offer

_item, _p_data, _store_command, _read_pdu, _recv_exactly = item, p_data, store_command, read_pdu, recv_exactly


def _associate_rq(abstract: str, syntax: str, calling: str = RAW_AE, called: str = "SIDECAR") -> bytes:
    return _raw_associate_rq(abstract, syntax, calling=calling, called=called)


# -- a running sidecar and what it has acknowledged ---------------------------------------------


@dataclass
class Service:
    """A running sidecar plus the instances it acknowledged, for checks after every case."""

    app: Sidecar
    root: Path
    acknowledged: dict[str, Path] = field(default_factory=dict)
    _next_seed: int = 1000

    @property
    def spool(self) -> Path:
        return self.app.spool.root

    def associate(self, contexts: list[tuple[str, list[str]]], ae_title: str = SCU_AE,
                  called: str = "SIDECAR") -> Association:
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        return ae.associate(HOST, self.app.port, ae_title=called)

    @contextmanager
    def mr_association(self, *syntaxes: str) -> Iterator[Association]:
        """An association offering MR Image Storage in `syntaxes` (default Explicit VR LE)."""
        contexts = [(MRImageStorage, [ts]) for ts in (syntaxes or (ExplicitVRLittleEndian,))]
        contexts.append((Verification, [ExplicitVRLittleEndian]))
        assoc = self.associate(contexts)
        assert assoc.is_established, "the sidecar refused a plain MR association"
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def store_good(self) -> str:
        """C-STORE a valid new MR slice; it must succeed and be journalled and spooled."""
        self._next_seed += 1
        ds = make_mr(seed=self._next_seed)
        with self.mr_association() as assoc:
            status = assoc.send_c_store(ds)
        assert status.Status == StoreStatus.SUCCESS, f"good instance refused: {status}"
        uid = str(ds.SOPInstanceUID)
        stored = self.app.journal.instance(uid)
        assert stored is not None, "a good instance was acknowledged but not journalled"
        self.acknowledged[uid] = Path(stored.path)
        return uid

    def assert_still_serving(self) -> None:
        """C-ECHO and a good C-STORE succeed; nothing acknowledged before has been lost."""
        assoc = self.associate([(Verification, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
        self.store_good()
        self.assert_nothing_lost()

    def assert_nothing_lost(self) -> None:
        for uid, path in self.acknowledged.items():
            assert self.app.journal.has_instance(uid), f"acknowledged instance {uid} left the journal"
            assert path.is_file(), f"acknowledged instance {uid} left the spool"
            assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) == uid

    def spooled_files(self) -> set[Path]:
        return {p for p in self.spool.rglob("*") if p.is_file()}


def _config_for(folder: Path, **limits: int) -> Path:
    return write_config(
        folder, routes=[],
        limits={"max_instance_bytes": MAX_INSTANCE_BYTES, "min_free_disk_bytes": 0, **limits},
        access={"calling_ae_titles": [SCU_AE, RAW_AE]},
    )


@contextmanager
def bad_input_service(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Service]:
    """A running sidecar for one module's cases, with one good instance acknowledged first."""
    root = tmp_path_factory.mktemp(name)
    with running_sidecar(_config_for(root / "conf")) as app:
        svc = Service(app, root)
        svc.store_good()  # something acknowledged before the first bad case
        yield svc


# -- crafting broken instances ------------------------------------------------------------------


@contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom hold and write values the test means to be invalid."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode, settings.reading_validation_mode = saved


def _file_bytes(ds: Dataset) -> bytes:
    """Preamble, file meta (as given) and the dataset in Explicit VR LE, with no checks."""
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _send_bytes(assoc: Association, data: bytes, folder: Path) -> Dataset:
    """C-STORE a file's bytes as they are: SOP Class/Instance and syntax come from its file meta."""
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".dcm", delete=False) as fh:
        fh.write(data)
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(Path(fh.name))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        os.unlink(fh.name)


def _crafted(seed: int, change: Callable[[Dataset], None]) -> bytes:
    """A valid MR slice (file meta keeps its valid UIDs) with `change` applied to the dataset."""
    ds = make_mr(seed=seed)
    with _lenient_pydicom():
        change(ds)
        return _file_bytes(ds)


def _assert_refused(status: Dataset, expected: StoreStatus, *words: str) -> str:
    assert "Status" in status, "no C-STORE response (the association was lost)"
    assert status.Status == expected, (
        f"expected {expected.name}, got 0x{int(status.Status):04X}: {status.get('ErrorComment')}")
    comment = str(status.get("ErrorComment", ""))
    assert comment, f"{expected.name} without an ErrorComment"
    for word in words:
        assert word.lower() in comment.lower(), f"ErrorComment {comment!r} does not mention {word!r}"
    return comment


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)
    return change


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)
    return change



def _raw_peer(service: Service) -> socket.socket:
    return connect(service.app.port, RAW_TIMEOUT_S)


__all__ = ["A_ABORT", "HOST", "HTJ2K_LOSSLESS", "MAX_INSTANCE_BYTES", "PRIVATE_SOP_CLASS", "RAW_AE", "SCU_AE",
           "Service", "bad_input_service"]


#: The marks of every bad-input module: the in-process sidecar decodes the crafted datasets, and
#: pydicom warns about the UIDs they broke.
BAD_INPUT_MARKS = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length:UserWarning"),
]


def module_service(name: str) -> Callable[[pytest.TempPathFactory], Iterator[Service]]:
    """A module-scoped `service` fixture: one bad-input sidecar for the whole module."""

    @pytest.fixture(scope="module", name="service")
    def _service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
        with bad_input_service(tmp_path_factory, name) as svc:
            yield svc

    return _service

