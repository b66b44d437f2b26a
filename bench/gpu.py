"""GPU bench: batched throughput and per-slice latency of the LGE QA model on CUDA (issue 15).

Two measurements of the same model (demo weights) in one run:
- bare forward: the torch module on the device, batches of 1..64 phantom slices (already
  prepared tensors), `torch.cuda.synchronize()` around each timed call;
- through the sidecar: the sidecar's `Worker` with the model's forward on the same device (a
  device backend behind the model's backend seam), over a real SQLite journal: each slice is an
  instance-mode job; per-slice latency is claim -> results queued (read from the spool, prepare,
  forward, SR built and written, outbox queued), throughput with batching (`max_batch`).
Without a CUDA device it prints plainly that it skipped and exits 0. `--device cpu` runs the same
code on the CPU (to check the bench itself; the figures are not GPU figures).

    python -m bench.gpu [--device cuda|cpu] [--slices 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "lge_qa" / "weights" / "demo.pt"


class DeviceTorch:
    """A tensor backend running a torch module on `device` (copy in, forward, copy out)."""

    name = "device-torch"

    def __init__(self, net: Any, device: str) -> None:
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.net = net.to(self.device).eval()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
            out = self.net(x)
            return out.float().cpu().numpy()

    def run_named(self, inputs: Any) -> dict[str, np.ndarray]:
        """The LGE forward by name (one input, one output: the model's signature names)."""
        from models.lge_qa.wrapper import INPUT_NAME, OUTPUT_NAME

        return {OUTPUT_NAME: self.run(inputs[INPUT_NAME])}

    def close(self) -> None:
        pass


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bare_forward(net: Any, shape: tuple[int, ...], device: str, repeats: int) -> None:
    import torch

    net = net.to(device).eval()
    print(f"bare forward on {device} (input {shape[1:]} per slice, median of {repeats}):")
    for batch in (1, 8, 32, 64):
        x = torch.randn(batch, *shape[1:], device=device)
        with torch.inference_mode():
            for _ in range(3):
                net(x)  # warm-up (cuDNN autotune, allocator)
            _sync(device)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        print(f"  batch {batch:3d}: {med * 1000:8.2f} ms per call, {batch / med:9.0f} slices/s,"
              f" p95 {_pct(times, 95) * 1000:.2f} ms")


def through_sidecar(device: str, n_slices: int, max_batch: int) -> None:
    from models.lge_qa.wrapper import build
    from sidecar.journal import InstanceRecord, Journal
    from sidecar.pipeline.worker import Worker
    from sidecar.routing.rules import Route
    from train.phantoms.lge import demo_series

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        model = build(WEIGHTS, {})
        model.use_backend(DeviceTorch(model.net, device))
        journal = Journal(f"sqlite:///{work / 'journal.sqlite'}")
        route = Route.model_validate({"name": "lge", "model": "lge_qa", "mode": "instance",
                                      "outputs": ["sr"], "destinations": ["pacs"]})
        slices: list[Any] = []
        while len(slices) < n_slices:
            slices.extend(demo_series(seed=len(slices), n_slices=min(16, n_slices - len(slices))))
        for ds in slices:
            path = work / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            journal.record_instance(InstanceRecord(str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                                   str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), "MR",
                                                   str(path), path.stat().st_size))
        for mode, batch in (("one slice per job", 1), (f"batched (max_batch {max_batch})", max_batch)):
            uids = [str(ds.SOPInstanceUID) for ds in slices]
            for ds in slices:
                journal.enqueue_job(series_uid=str(ds.SeriesInstanceUID), instance_uid=str(ds.SOPInstanceUID),
                                    model_id="lge_qa", model_version=model.card.version, revision=batch,
                                    route="lge", priority=0)
            worker = Worker(journal, {"lge_qa": model}, [route], work / "results", max_batch=batch)
            per: list[float] = []
            t0 = time.perf_counter()
            while True:
                t1 = time.perf_counter()
                outcomes = worker.run_once(streaming_only=True)
                if outcomes is None:
                    break
                _sync(device)
                per.extend([(time.perf_counter() - t1)] * len(outcomes))
            total = time.perf_counter() - t0
            print(f"through the sidecar worker on {device}, {mode}: {len(uids)} slices in {total:.2f} s"
                  f" = {len(uids) / total:.1f} slices/s; per slice (claim -> results queued)"
                  f" p50 {_pct(per, 50) * 1000:.0f} ms, p95 {_pct(per, 95) * 1000:.0f} ms")
        journal.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the bench")
    ap.add_argument("--slices", type=int, default=64, help="slices through the sidecar worker (default 64)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per batch size (default 20)")
    ap.add_argument("--max-batch", type=int, default=16, help="worker batch size (default 16)")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench.gpu: SKIPPED - no CUDA device here (torch {torch.__version__},"
              f" torch.cuda.is_available() is False); nothing was measured.")
        return 0
    torch.set_num_threads(1)
    from sidecar.logging import configure_logging

    configure_logging("warning", "console")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}")
    else:
        print(f"device: CPU (1 thread), torch {torch.__version__} - a check of the bench, NOT GPU figures")
    from models.lge_qa.wrapper import build

    model = build(WEIGHTS, {})
    bare_forward(model.net, (1, *model.tensor_signature().input_shape), args.device, args.repeats)
    through_sidecar(args.device, args.slices, args.max_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
