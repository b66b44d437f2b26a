"""A poison instance (issue 13 case 1) must not wedge the service: the next study still gets its SR.

The instance: an MR slice of ~9 KB whose header claims NumberOfFrames = 1000000000 with
Rows = Columns = 1, RLE Lossless with one fragment (a 64-byte RLE header, one segment). It is
small on the wire and passes the listener's size check, so it is acknowledged; decoding it
would allocate 2 GB. The service runs as a subprocess with inference in worker processes
(`worker.isolation: process`) and the real LGE and hand-joints models (demo weights). After the
poison slice, a hand radiograph must get its SR at the PACS within 60 s, the poison job must
fail with a decode-budget reason (not crash-loop), and no process of the service may pass 2 GiB
resident memory meanwhile.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from models.checkpoint import sha256_of
from sidecar.journal import Journal
from sidecar.pipeline.procs import rss_bytes
from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import make_mr
from tests.helpers.processes import SidecarProcess, wait_for
from tests.helpers.sidecar import write_config
from train.phantoms.dicom_writer import write
from train.phantoms.hand import hand_image

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(480)]

ROOT = Path(__file__).resolve().parents[2]
LGE_WEIGHTS = ROOT / "models" / "lge_qa" / "weights" / "demo.pt"
HAND_WEIGHTS = ROOT / "models" / "hand_joints" / "weights" / "demo.pt"
RSS_LIMIT = 2 << 30
SR_WITHIN_S = 60.0


def poison_slice() -> pydicom.Dataset:
    ds = make_mr(seed=13)
    ds.Rows = ds.Columns = 1
    ds.NumberOfFrames = 1_000_000_000
    segment = bytes([127]) + b"\x01" * 128  # a literal run: 128 bytes, repeated to ~9 KB below
    segment = segment * 70
    header = struct.pack("<16L", 1, 64, *([0] * 14))  # PS3.5 G.3.1: one segment at offset 64
    ds.PixelData = encapsulate([header + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def _send_rle(port: int, ds: pydicom.Dataset) -> int:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, RLELossless)
    assoc = ae.associate("127.0.0.1", port, ae_title="SIDECAR")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _service_pids(pid: int) -> set[int]:
    out = {pid}
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        out.update(int(p) for p in children.read_text().split())
    return out


class RssWatch(threading.Thread):
    """Samples the resident memory of the service and its children until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.peak_total = pid, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            sizes = [rss_bytes(p) or 0 for p in _service_pids(self.pid)]
            self.peak = max(self.peak, *sizes)
            self.peak_total = max(self.peak_total, sum(sizes))


def test_poison_slice_is_acknowledged_and_the_next_radiograph_still_gets_its_sr(tmp_path: Path) -> None:
    """Poison acknowledged, its job failed on the decode budget; a hand SR still arrives within 60 s."""
    poison = poison_slice()
    hand = hand_image(902_003, laterality="L", n_hands=1, monochrome1=False, modality="DX", disease="RA").dataset
    hand.ImagesInAcquisition = 1
    hand_file = write(hand, tmp_path / "in" / "hand.dcm")
    routes = [
        {"name": "lge", "model": "lge_qa", "mode": "instance", "match": {"modality": ["MR"]},
         "outputs": ["sr", "alert"], "destinations": ["pacs"], "quiet_s": 5},
        {"name": "hand", "model": "hand_joints", "mode": "series",
         "match": {"modality": ["CR", "DX"], "body_part": ["HAND"]}, "outputs": ["sr"],
         "destinations": ["pacs"], "quiet_s": 1},
    ]
    with StoreSCP(tmp_path / "pacs", ae_title="PACS") as pacs:
        cfg = write_config(
            tmp_path / "conf", routes=routes,
            models={"lge_qa": {"weights": str(LGE_WEIGHTS), "sha256": sha256_of(LGE_WEIGHTS),
                               "options": {"torch_threads": 1}},
                    "hand_joints": {"weights": str(HAND_WEIGHTS), "sha256": sha256_of(HAND_WEIGHTS),
                                    "options": {"torch_threads": 1}}},
            destinations=[{"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs.port,
                           "ae_title": "PACS"}],
            worker={"poll_s": 0.05, "torch_threads": 1, "isolation": "process", "processes": 1},
        )
        sidecar = SidecarProcess(cfg, tmp_path / "sidecar.log", start_timeout_s=240.0).start()
        assert sidecar.proc is not None
        watch = RssWatch(sidecar.proc.pid)
        watch.start()
        try:
            assert _send_rle(sidecar.port, poison) == 0x0000  # Success: it is small and well formed
            t0 = time.monotonic()
            sent = storescu([hand_file], sidecar.port, called_aet="SIDECAR")
            assert sent.returncode == 0, sent.stderr
            [sr_path] = pacs.wait_for_files(1, timeout=SR_WITHIN_S)
            took = time.monotonic() - t0
            assert pydicom.dcmread(sr_path).Modality == "SR"
            journal = Journal(f"sqlite:///{tmp_path / 'conf' / 'var' / 'journal.sqlite'}")
            try:
                wait_for(lambda: any(j.state == "failed" for j in journal.jobs(str(poison.SeriesInstanceUID))),
                         30, "the poison job failed")
                [job] = journal.jobs(str(poison.SeriesInstanceUID))
                assert "BudgetExceeded" in (job.reason or "") and job.attempts == 1
            finally:
                journal.close()
        finally:
            watch.done.set()
            watch.join(5)
            sidecar.terminate()
        print(f"hand SR {took:.1f} s after the poison; peak RSS per process {watch.peak / 2**20:.0f} MiB,"
              f" all processes {watch.peak_total / 2**20:.0f} MiB")
        assert took < SR_WITHIN_S
        assert watch.peak < RSS_LIMIT, f"a process reached {watch.peak / 2**20:.0f} MiB"
