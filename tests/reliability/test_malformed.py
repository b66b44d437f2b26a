"""Malformed input, the kinds tests/integration/test_bad_input_*.py do not cover.

PDU layer (a scripted raw-socket peer): PDUs out of order, wrong lengths, bad items, bad
presentation context IDs, broken DIMSE command sets. Dataset layer (a pynetdicom SCU sending
crafted bytes as they are): wrong VRs, lengths that overrun, undefined-length sequences never
closed, deflate garbage, odd lengths, impossible image attributes, broken encapsulated pixel data.

Each kind gets a clear answer (an A-ASSOCIATE-RJ, an A-ABORT, a closed connection, or a named
DIMSE status with an ErrorComment; a few tolerable oddities are stored with Success), and after
each the service still answers C-ECHO, stores a good instance and has lost nothing it had
acknowledged. Each kind's answer is pinned to the one docs/conformance.md 1.6 documents.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom.sop_class import MRImageStorage, UltrasoundImageStorage, Verification

from sidecar.dicom.status import StoreStatus
from tests.helpers.bad_input import (
    A_ABORT,
    RAW_AE,
    Service,
    _assert_refused,
    _associate_rq,
    _config_for,
    _crafted,
    _file_bytes,
    _item,
    _lenient_pydicom,
    _p_data,
    _raw_peer,
    _read_pdu,
    _send_bytes,
    _store_command,
)
from tests.helpers.dicom_factory import encoded, make_mr, make_us
from tests.helpers.sidecar import running_sidecar

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns about the values we broke
]


ABORT, REJECT, CLOSED, ACCEPT, SILENT = "A-ABORT", "A-ASSOCIATE-RJ", "closed", "A-ASSOCIATE-AC", "no answer"
_PDU_NAMES = {0x02: ACCEPT, 0x03: REJECT, 0x04: "P-DATA-TF", 0x06: "A-RELEASE-RP", 0x07: ABORT}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("malformed")
    with running_sidecar(_config_for(root / "conf")) as app:
        svc = Service(app, root)
        svc.store_good()
        yield svc


# -- PDU layer ------------------------------------------------------------------------------------

_RQ = _associate_rq(MRImageStorage, ExplicitVRLittleEndian)


def _rq_with(*, version: int = 1, app_context: str = "1.2.840.10008.3.1.1.1", context_id: int = 1,
             contexts: int = 1, called: str = "SIDECAR", user: bytes | None = None) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with one field changed."""
    cx = b"".join(
        _item(0x20, bytes([context_id + 2 * i, 0, 0, 0]) + _item(0x30, MRImageStorage.encode())
              + _item(0x40, ExplicitVRLittleEndian.encode()))
        for i in range(contexts))
    if user is None:
        user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999.9"))
    body = (struct.pack(">HH", version, 0) + called.ljust(16).encode() + RAW_AE.ljust(16).encode() + bytes(32)
            + _item(0x10, app_context.encode()) + cx + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def _after_ac(*pdus: bytes) -> list[bytes]:
    """Associate properly first, then send `pdus`."""
    return [_RQ, *pdus]


def _command_without(keyword: str) -> bytes:
    cmd = Dataset()
    cmd.AffectedSOPClassUID = MRImageStorage
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.9.9999.77"
    delattr(cmd, keyword)
    cmd.CommandGroupLength = 0
    cmd.CommandGroupLength = len(encoded(cmd, True, True)) - 12
    return encoded(cmd, True, True)


def _command_field(value: int) -> bytes:
    cmd = Dataset()
    cmd.AffectedSOPClassUID = MRImageStorage
    cmd.CommandField = value
    cmd.MessageID = 1
    cmd.CommandDataSetType = 0x0101
    cmd.CommandGroupLength = 0
    cmd.CommandGroupLength = len(encoded(cmd, True, True)) - 12
    return encoded(cmd, True, True)


_GOOD_DATA = encoded(make_mr(seed=77), False, True)
_STORE = _store_command(MRImageStorage, "1.2.826.0.1.3680043.9.9999.77")

PDU_KINDS: list[tuple[str, list[bytes], set[str]]] = [
    ("p-data-before-association", [_p_data(1, 0x03, _STORE)], {ABORT}),
    ("a-release-before-association", [struct.pack(">BxI", 0x05, 4) + bytes(4)], {ABORT}),
    ("a-associate-ac-from-the-requestor", [struct.pack(">BxI", 0x02, 4) + bytes(4)], {ABORT}),
    ("zero-length-associate-rq", [struct.pack(">BxI", 0x01, 0)], {ABORT}),
    ("associate-rq-length-shorter-than-its-items", [_RQ[:2] + struct.pack(">I", 80) + _RQ[6:]],
     {ABORT}),
    ("associate-rq-item-length-past-the-pdu-end",
     [_RQ[:74] + b"\x10\x00\xff\xff" + _RQ[78:]], {ABORT}),
    ("associate-rq-protocol-version-2", [_rq_with(version=2)], {REJECT}),
    ("associate-rq-no-presentation-context", [_rq_with(contexts=0)], {ACCEPT}),
    # pynetdicom's state machine raises on an even ID and answers nothing; the ACSE timeout closes it.
    ("associate-rq-even-presentation-context-id", [_rq_with(context_id=2)], {SILENT}),
    ("associate-rq-wrong-application-context", [_rq_with(app_context="1.2.3.4")], {ACCEPT}),
    # Tolerated: no user information item means no maximum PDU length was asked for.
    ("associate-rq-without-user-information", [_rq_with(user=b"")], {ACCEPT}),
    ("associate-rq-blank-called-ae", [_rq_with(called="")], {ABORT}),
    ("second-associate-rq-on-one-association", _after_ac(_RQ), {ABORT}),
    ("p-data-on-unnegotiated-context-id", _after_ac(_p_data(3, 0x03, _STORE)), {ABORT}),
    ("p-data-pdv-length-past-the-pdu",
     _after_ac(struct.pack(">BxI", 0x04, 12) + struct.pack(">IBB", 4000, 1, 3) + bytes(6)), {ABORT}),
    ("p-data-zero-length-pdv", _after_ac(struct.pack(">BxI", 0x04, 4) + struct.pack(">I", 0)),
     {ABORT}),
    ("data-fragment-before-any-command", _after_ac(_p_data(1, 0x02, _GOOD_DATA)), {ABORT}),
    ("c-store-command-missing-affected-sop-instance-uid",
     _after_ac(_p_data(1, 0x03, _command_without("AffectedSOPInstanceUID")), _p_data(1, 0x02, _GOOD_DATA)),
     {CLOSED}),
    ("c-store-command-missing-message-id",
     _after_ac(_p_data(1, 0x03, _command_without("MessageID")), _p_data(1, 0x02, _GOOD_DATA)),
     {SILENT}),
    ("unknown-dimse-command-field", _after_ac(_p_data(1, 0x03, _command_field(0x0FF1))),
     {CLOSED}),
    ("command-set-garbage", _after_ac(_p_data(1, 0x03, b"\xde\xad\xbe\xef" * 8)), {CLOSED}),
    ("a-abort-with-garbage-reason-then-data", _after_ac(struct.pack(">BxIBBBB", 0x07, 4, 0, 0, 9, 9),
                                                        _p_data(1, 0x03, _STORE)), {CLOSED}),
]


def _exchange(service: Service, pdus: list[bytes]) -> str:
    """Send the PDUs (reading the A-ASSOCIATE-AC after a leading good RQ); name the last answer."""
    with _raw_peer(service) as sock:
        sock.settimeout(3.0)
        answer = SILENT
        for i, pdu in enumerate(pdus):
            try:
                sock.sendall(pdu)
            except (BrokenPipeError, ConnectionResetError):
                return CLOSED
            if i == 0 and pdu is _RQ and len(pdus) > 1:
                got = _read_pdu(sock)
                assert got is not None and got[0] == 0x02, f"the good A-ASSOCIATE-RQ was answered {got}"
                continue
            try:
                got = _read_pdu(sock)
            except TimeoutError:
                answer = SILENT
                continue
            answer = CLOSED if got is None else _PDU_NAMES.get(got[0], f"PDU 0x{got[0]:02X}")
        if answer == ACCEPT:
            sock.sendall(A_ABORT)
        return answer


class TestPduLayer:
    """A scripted peer breaks the upper layer protocol (PS3.8); the service answers and serves on."""

    @pytest.mark.parametrize(("kind", "pdus", "answers"), PDU_KINDS, ids=[k for k, _, _ in PDU_KINDS])
    def test_malformed_pdu_is_answered_and_the_service_goes_on(
        self, service: Service, kind: str, pdus: list[bytes], answers: set[str],
    ) -> None:
        """Each broken PDU sequence gets the one answer docs/conformance.md 1.6 documents; the service serves on."""
        answer = _exchange(service, pdus)
        (expected,) = answers
        assert answer == expected, f"{kind}: answered {answer}, documented {expected}"
        service.assert_still_serving()


# -- dataset layer ------------------------------------------------------------------------------


def _raw_element(group: int, elem: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element, with a length that may lie."""
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n) + value


def _dataset_bytes(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    with _lenient_pydicom():
        write_dataset(fp, ds)
    return fp.getvalue()


def _file_with_body(ds: Dataset, body: bytes) -> bytes:
    """A file whose meta comes from `ds` and whose dataset is `body` (bytes as they are)."""
    empty = Dataset()
    empty.file_meta = ds.file_meta
    head = _file_bytes(empty)
    return head + body


def _splice(ds: Dataset, tag: int, element: bytes) -> bytes:
    """`ds` encoded with `element` put where `tag` sorts (the original element removed)."""
    before, after = Dataset(), Dataset()
    for el in ds:
        if el.tag == tag:
            continue
        (before if el.tag < tag else after).add(el)
    return _dataset_bytes(before) + element + _dataset_bytes(after)


def _mr_with_element(tag: int, element: bytes, seed: int) -> bytes:
    ds = make_mr(seed=seed)
    return _file_with_body(ds, _splice(ds, tag, element))


def _mr_truncated_after(tag: int, element: bytes, seed: int) -> bytes:
    """Everything before `tag`, then `element`, then nothing (a dataset that ends inside it)."""
    ds = make_mr(seed=seed)
    before = Dataset()
    for el in ds:
        if el.tag < tag:
            before.add(el)
    return _file_with_body(ds, _dataset_bytes(before) + element)


def _us_change(change: Callable[[Dataset], None], seed: int) -> bytes:
    ds = make_us(seed=seed)
    with _lenient_pydicom():
        change(ds)
        return _file_bytes(ds)


def _set_all(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for k, v in values.items():
            setattr(ds, k, v)
    return change


def _encapsulated(fragments: bytes) -> Callable[[Dataset], None]:
    """Pixel data replaced by an encapsulated value whose item structure is `fragments`."""
    def change(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds["PixelData"].VR = "OB"
        ds["PixelData"].value = fragments
        ds["PixelData"].is_undefined_length = True
    return change


def _encapsulated_raw(fragments: bytes, seed: int) -> bytes:
    """An RLE Lossless MR whose Pixel Data (undefined length) holds `fragments` as they are."""
    ds = make_mr(seed=seed)
    ds.file_meta.TransferSyntaxUID = RLELossless
    del ds.PixelData
    return _file_with_body(ds, _dataset_bytes(ds) + _raw_element(0x7FE0, 0x0010, b"OB", b"", length=_UNDEFINED)
                           + fragments)


_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
_NESTED_OPEN = (_raw_element(0x0008, 0x1140, b"SQ", b"", length=_UNDEFINED) + _ITEM + struct.pack("<I", _UNDEFINED)
                + _raw_element(0x0008, 0x1150, b"SQ", b"", length=_UNDEFINED) + _ITEM + struct.pack("<I", _UNDEFINED))

CU, OOR, OK = StoreStatus.CANNOT_UNDERSTAND, StoreStatus.REFUSED_OUT_OF_RESOURCES, StoreStatus.SUCCESS

DATASET_KINDS: list[tuple[str, Callable[[], bytes], str, set[int]]] = [
    ("sop-instance-uid-with-vr-US", lambda: _mr_with_element(
        0x00080018, _raw_element(0x0008, 0x0018, b"US", b"\x01\x00"), 501), MRImageStorage, {CU}),
    ("rows-with-vr-LO-text", lambda: _mr_with_element(
        0x00280010, _raw_element(0x0028, 0x0010, b"LO", b"ab"), 502), MRImageStorage, {CU}),
    ("rows-us-with-odd-length-3", lambda: _mr_with_element(
        0x00280010, _raw_element(0x0028, 0x0010, b"US", b"\x40\x00\x00"), 503), MRImageStorage, {CU}),
    ("element-length-past-the-dataset-end", lambda: _mr_with_element(
        0x00080060, _raw_element(0x0008, 0x0060, b"CS", b"MR", length=0xFFF0), 504), MRImageStorage, {CU}),
    ("odd-length-series-description", lambda: _mr_with_element(
        0x0008103E, _raw_element(0x0008, 0x103E, b"LO", b"odd"), 505), MRImageStorage, {OK}),
    ("unknown-vr-code", lambda: _mr_with_element(
        0x00081030, _raw_element(0x0008, 0x1030, b"ZZ", b"XY"), 506), MRImageStorage, {CU}),
    ("undefined-length-sequence-never-closed", lambda: _mr_truncated_after(
        0x00081140, _raw_element(0x0008, 0x1140, b"SQ", b"", length=_UNDEFINED) + _ITEM
        + struct.pack("<I", _UNDEFINED), 507), MRImageStorage, {CU}),
    ("nested-undefined-length-sequences-never-closed", lambda: _mr_truncated_after(
        0x00081140, _NESTED_OPEN, 508), MRImageStorage, {CU}),
    # Tolerated by pydicom (it warns and reads on); nothing the sidecar needs is inside.
    ("sequence-item-with-wrong-tag", lambda: _mr_with_element(
        0x00081140, _raw_element(0x0008, 0x1140, b"SQ", b"\x08\x00\x18\x00" + bytes(4) + _SEQ_END,
                                 length=_UNDEFINED), 509), MRImageStorage, {OK}),
    ("bits-allocated-0", lambda: _crafted(510, _set_all(BitsAllocated=0)), MRImageStorage, {CU}),
    ("bits-allocated-7", lambda: _crafted(511, _set_all(BitsAllocated=7)), MRImageStorage, {CU}),
    ("bits-stored-above-bits-allocated", lambda: _crafted(512, _set_all(BitsStored=24)), MRImageStorage, {CU}),
    ("samples-per-pixel-0", lambda: _crafted(513, _set_all(SamplesPerPixel=0)), MRImageStorage, {CU}),
    ("samples-per-pixel-5", lambda: _crafted(514, _set_all(SamplesPerPixel=5)), MRImageStorage, {CU}),
    ("planar-configuration-2-on-rgb", lambda: _us_change(_set_all(PlanarConfiguration=2), 515),
     UltrasoundImageStorage, {CU}),
    ("rows-0", lambda: _crafted(516, _set_all(Rows=0)), MRImageStorage, {CU}),
    ("columns-missing", lambda: _crafted(517, lambda ds: delattr(ds, "Columns")), MRImageStorage, {CU}),
    ("number-of-frames-negative", lambda: _crafted(518, _set_all(NumberOfFrames="-3")), MRImageStorage, {CU}),
    ("number-of-frames-0", lambda: _crafted(519, _set_all(NumberOfFrames="0")), MRImageStorage, {CU}),
    ("number-of-frames-not-a-number", lambda: _mr_with_element(
        0x00280008, _raw_element(0x0028, 0x0008, b"IS", b"many"), 520), MRImageStorage, {CU}),
    ("encapsulated-pixel-data-item-tag-wrong", lambda: _encapsulated_raw(
        _ITEM + bytes(4) + b"\x08\x00\x10\x00" + bytes(4) + _SEQ_END, 521), MRImageStorage, {CU}),
    ("encapsulated-pixel-data-fragment-past-the-end", lambda: _encapsulated_raw(
        _ITEM + bytes(4) + _ITEM + struct.pack("<I", 1 << 20) + b"\x00" * 16, 522), MRImageStorage, {CU}),
    # Tolerated: the fragments are whole; only the closing delimiter at the very end is missing.
    ("encapsulated-pixel-data-without-delimiter", lambda: _crafted(523, _encapsulated(
        _ITEM + bytes(4) + _ITEM + struct.pack("<I", 8) + bytes(8))), MRImageStorage, {OK}),
    ("empty-dataset", lambda: _file_with_body(make_mr(seed=524), b""), MRImageStorage, {CU}),
    ("unknown-specific-character-set", lambda: _crafted(525, _set_all(SpecificCharacterSet="ISO_IR 999")),
     MRImageStorage, {OK}),
    ("patient-name-invalid-utf8", lambda: _crafted(526, _set_all(
        SpecificCharacterSet="ISO_IR 192", PatientName=b"Phantom^\xff\xfe\xfa"))
     , MRImageStorage, {OK}),
]

SYNTAX_KINDS: list[tuple[str, str, Callable[[], bytes], set[int]]] = [
    ("deflate-garbage", DeflatedExplicitVRLittleEndian, lambda: b"\x78\x9c" + bytes(range(256)) * 8, {CU}),
    ("deflate-truncated-stream", DeflatedExplicitVRLittleEndian,
     lambda: zlib.compress(_GOOD_DATA)[: len(zlib.compress(_GOOD_DATA)) // 3], {CU}),
    ("implicit-bytes-in-an-explicit-context", ExplicitVRLittleEndian,
     lambda: encoded(make_mr(seed=531), True, True), {CU}),
    ("little-endian-bytes-in-a-big-endian-context", ExplicitVRBigEndian,
     lambda: encoded(make_mr(seed=532), False, True), {CU}),
    ("jpeg-context-with-uncompressed-pixel-data", JPEGBaseline8Bit,
     lambda: encoded(make_mr(seed=533), False, True), {CU}),
]


class TestDatasetLayer:
    """Crafted datasets, sent byte for byte; each gets a named status, and the service goes on."""

    @pytest.mark.parametrize(("kind", "make", "sop_class", "statuses"), DATASET_KINDS,
                             ids=[k for k, _, _, _ in DATASET_KINDS])
    def test_malformed_dataset_gets_a_clear_status(
        self, service: Service, kind: str, make: Callable[[], bytes], sop_class: str, statuses: set[int],
    ) -> None:
        """The named status (with an ErrorComment when refused); nothing refused is kept."""
        data = make()
        encapsulated = b"1.2.840.10008.1.2.5" in data[:400]
        if sop_class == UltrasoundImageStorage:
            context = _us_association(service)
        else:
            context = service.mr_association(RLELossless if encapsulated else ExplicitVRLittleEndian)
        with context as assoc:
            status = _send_bytes(assoc, data, service.root)
        assert "Status" in status, f"{kind}: no C-STORE response (the association was lost)"
        code = int(status.Status)
        (expected,) = statuses
        assert code == expected, f"{kind}: status 0x{code:04X} ({status.get('ErrorComment')}), documented 0x{expected:04X}"
        if code != OK:
            _assert_refused(status, StoreStatus(code))
        service.assert_still_serving()

    @pytest.mark.parametrize(("kind", "syntax", "make", "statuses"), SYNTAX_KINDS,
                             ids=[k for k, _, _, _ in SYNTAX_KINDS])
    def test_bytes_that_do_not_match_the_negotiated_syntax_are_refused(
        self, service: Service, kind: str, syntax: str, make: Callable[[], bytes], statuses: set[int],
    ) -> None:
        """A raw peer sends a dataset whose encoding is not the context's transfer syntax."""
        uid = "1.2.826.0.1.3680043.9.9999.53" + str(len(kind))
        with _raw_peer(service) as sock:
            sock.sendall(_associate_rq(MRImageStorage, syntax))
            ac = _read_pdu(sock)
            assert ac is not None and ac[0] == 0x02, f"{kind}: association not accepted ({ac})"
            sock.sendall(_p_data(1, 0x03, _store_command(MRImageStorage, uid)))
            sock.sendall(_p_data(1, 0x02, make()))
            rsp = _read_pdu(sock)
            assert rsp is not None and rsp[0] == 0x04, f"{kind}: no C-STORE-RSP ({rsp})"
            status = _status_of(rsp[1])
            (expected,) = statuses
            assert status == expected, f"{kind}: status 0x{status:04X}, documented 0x{expected:04X}"
            sock.sendall(A_ABORT)
        assert not service.app.journal.has_instance(uid)
        service.assert_still_serving()


def _us_association(service: Service):
    from contextlib import contextmanager

    @contextmanager
    def cm() -> Iterator[object]:
        assoc = service.associate([(UltrasoundImageStorage, [ExplicitVRLittleEndian]),
                                   (Verification, [ExplicitVRLittleEndian])])
        assert assoc.is_established
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
    return cm()


def _status_of(p_data_body: bytes) -> int:
    """The Status (0000,0900) of a C-STORE-RSP carried in one P-DATA-TF body (one PDV)."""
    pdv = p_data_body[6:]
    i = 0
    while i + 8 <= len(pdv):
        group, elem, length = struct.unpack("<HHI", pdv[i:i + 8])
        if (group, elem) == (0x0000, 0x0900):
            return int(struct.unpack("<H", pdv[i + 8:i + 10])[0])
        i += 8 + length
    raise AssertionError("no Status in the response")
