"""The ingest baseline: a bare pynetdicom C-STORE SCP that writes `event.encoded_dataset()` to files.

No decoding, no header check, no fsync, no journal: what pynetdicom itself costs per image.
Transport settings match the sidecar's listener (maximum PDU length 1 MiB, negotiated).
Run: `python -m bench.bare_scp PORT FOLDER` (127.0.0.1 only); SIGTERM stops it.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from sidecar.dicom.status import StoreStatus


def main(argv: list[str]) -> int:
    port, folder = int(argv[0]), Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        assert isinstance(event.request, C_STORE)
        uid = str(event.request.AffectedSOPInstanceUID)
        with open(folder / f"{uid}.dcm", "wb") as fh:
            fh.write(event.encoded_dataset())
        return StoreStatus.SUCCESS

    ae = AE(ae_title="BARE")
    # The sidecar's default (limits.max_pdu_bytes: 1 MiB); pynetdicom's own default of 16382
    # bytes would cut a 512x512 slice into 32 PDUs and make the baseline, not the sidecar, pay
    # for it.
    ae.maximum_pdu_size = 1 << 20
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done.wait()
    assert server is not None  # block=False returns the server
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
