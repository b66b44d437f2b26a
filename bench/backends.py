"""Backends bench: each model's network forward in process (torch) and on ONNX Runtime, side by side.

For each of the eight models (each network of hand_joints): the bundled demo weights, exported to
ONNX by the model's task (`python -m train <model> export`, which refuses a file that disagrees
with torch) into a temporary folder; inputs are phantoms through the model's own preprocessing,
prepared once (prepare is not timed). Then the same prepared batch, at batch 1 and at a realistic
batch for the model (`REALISTIC`), goes through the model's in-process backend (`InProcessTorch`)
and through `OnnxRuntimeBackend`: interleaved repeats (torch, onnxruntime, then the other order),
a warm-up call of each first, medians reported. Both run on the same number of CPU threads
(`torch.set_num_threads(n)`; onnxruntime `intra_op_num_threads=n`, `inter_op_num_threads=1`).

Printed per row: median ms per call of each, the ratio onnxruntime / torch (below 1: onnxruntime
faster), which is faster, and the largest |torch - onnxruntime| over the outputs of that batch.

    python -m bench.backends [--threads 2] [--repeats 20] [--quick] [--models lge_qa gout_mtp1 ...]

`--quick`: 5 repeats. Whether onnxruntime becomes a model's default is decided from these
figures (conf/models.yaml keeps `inprocess` until then).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_note

#: the realistic batch per model: an LGE short-axis stack, a breast study's images, one
#: radiograph's hands (detector) and one hand's joints (grader), a joint exam's stills or cines,
#: the three MTP1 views of both feet
REALISTIC: dict[str, dict[str, int]] = {
    "lge_qa": {"": 16},
    "breast_elastography": {"": 4},
    "hand_joints": {"detector": 2, "grader": 21},
    "synovitis_sgs": {"": 8},
    "synovitis_dgs": {"": 4},
    "synovitis_spd": {"": 8},
    "synovitis_dpd": {"": 4},
    "gout_mtp1": {"": 6},
}


@dataclass(frozen=True)
class Row:
    model: str
    network: str
    batch: int
    torch_ms: float
    ort_ms: float
    max_abs_diff: float

    @property
    def ratio(self) -> float:
        return self.ort_ms / self.torch_ms

    @property
    def faster(self) -> str:
        if abs(self.ratio - 1.0) < 0.05:
            return "even (within 5 %)"
        return f"onnxruntime x{1 / self.ratio:.2f}" if self.ratio < 1 else f"torch x{self.ratio:.2f}"


def _phantoms(model_id: str) -> list[Any]:
    """Phantom datasets of the model's domain (the same seeds every run)."""
    if model_id == "lge_qa":
        from train.phantoms.lge import demo_series

        return demo_series(seed=3, n_slices=8)
    if model_id == "breast_elastography":
        from train.phantoms.breast import KINDS, demo_series as breast_series

        return breast_series(seed=5, kinds=KINDS)
    if model_id == "hand_joints":
        from train.phantoms.hand import demo_series as hand_series, hand_image

        return [*hand_series(seed=4), hand_image(9, n_hands=2).dataset]
    if model_id.startswith("synovitis_"):
        from models.synovitis.transforms import VARIANTS
        from train.phantoms.joint_us import case_dataset, sample_cases

        spec = VARIANTS[model_id.removeprefix("synovitis_")]
        return [case_dataset(c, doppler=spec.doppler, cine=spec.cine) for c in sample_cases(2, seed=21)]
    if model_id == "gout_mtp1":
        from train.phantoms.mtp1 import case_dataset as mtp1_dataset, sample_cases as mtp1_cases

        return [mtp1_dataset(c) for c in mtp1_cases(2, seed=23, abnormal_share=0.5)]
    raise ValueError(f"no phantoms for {model_id!r}")


def prepared_inputs(model: Any, model_id: str) -> dict[str, dict[str, np.ndarray]]:
    """network -> its inputs by name, prepared from phantoms by the model's own code (one pool)."""
    datasets = _phantoms(model_id)
    if model_id == "hand_joints":
        from models.hand_joints.wrapper import CROPS, GRIDS, JOINT_INDEX

        hands = [h for ds in datasets for h in model.hand_inputs(ds)]
        return {"detector": {GRIDS: np.stack([h.grid for h in hands])},
                "grader": {CROPS: np.concatenate([h.crops for h in hands]),
                           JOINT_INDEX: np.concatenate([h.joint_index for h in hands]).astype(np.int64)}}
    [signature] = model.tensor_signatures()
    return {"": {signature.input_name: model.prepare(datasets).tensor.numpy()}}


def batch_of(pool: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """`n` items of the pool (repeated in order when the pool is smaller), contiguous."""
    size = len(next(iter(pool.values())))
    index = np.arange(n) % size
    return {name: np.ascontiguousarray(x[index]) for name, x in pool.items()}


Forward = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def time_pair(torch_run: Forward, ort_run: Forward, inputs: Mapping[str, np.ndarray],
              repeats: int) -> tuple[float, float, float]:
    """(median torch ms, median onnxruntime ms, max |difference|): interleaved, order alternating."""
    a, b = torch_run(inputs), ort_run(inputs)  # warm-up, and the answers compared
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in a)
    times: dict[str, list[float]] = {"torch": [], "ort": []}
    for r in range(repeats):
        order = (("torch", torch_run), ("ort", ort_run)) if r % 2 == 0 else (("ort", ort_run), ("torch", torch_run))
        for name, run in order:
            t0 = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["torch"]) * 1e3, statistics.median(times["ort"]) * 1e3, diff


def bench_model(model_id: str, threads: int, repeats: int, work: Path) -> list[Row]:
    """Export one model, open its files on onnxruntime, time every network at batch 1 and realistic."""
    from models.backends.base import OnnxRuntimeConfig
    from models.backends.onnx import OnnxRuntimeBackend
    from train.tasks import ExportRequest, load_tasks

    spec = load_tasks()[model_id]
    assert spec.export is not None, f"{model_id}'s task offers no export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracing notes; the export checks itself
        exported = spec.export(ExportRequest(format="onnx", out_dir=work / model_id))
    model = _build(model_id, threads)
    pools = prepared_inputs(model, model_id)
    files = {n.network: n.model_file for n in exported.networks}
    rows = []
    for signature in model.tensor_signatures():
        net = signature.network
        ort = OnnxRuntimeBackend(OnnxRuntimeConfig.of_file(files[net], signature, threads=threads), signature)
        inprocess = model.backends[net] if net else model.backend
        for n in sorted({1, REALISTIC[model_id][net]}):
            t_ms, o_ms, diff = time_pair(inprocess.run_named, ort.run_named, batch_of(pools[net], n), repeats)
            rows.append(Row(model_id, net or "-", n, t_ms, o_ms, diff))
        ort.close()
    return rows


def _build(model_id: str, threads: int) -> Any:
    """The model with the bundled weights conf/models.yaml names, in process."""
    import yaml

    from models.registry import ModelSpec, build_model

    root = Path(__file__).resolve().parents[1]
    entry = yaml.safe_load((root / "conf" / "models.yaml").read_text(encoding="utf-8"))["models"][model_id]
    return build_model(ModelSpec(model_id, (root / "conf" / entry["weights"]).resolve(), entry.get("sha256"),
                                 {**entry.get("options", {}), "torch_threads": threads}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both torch and onnxruntime (default 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of each backend per row (default 20)")
    parser.add_argument("--quick", action="store_true", help="5 repeats")
    parser.add_argument("--models", nargs="+", default=list(REALISTIC), choices=list(REALISTIC), metavar="MODEL",
                        help="models to run (default: all eight)")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed (pip install '.[onnx]'): nothing to compare", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    print(f"backends bench: {args.threads} thread(s) each, median of {repeats} interleaved calls; torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}")
    header = (f"{'model':20s} {'network':9s} {'batch':>5s} | {'torch ms':>9s} | {'ort ms':>9s} | "
              f"{'ort/torch':>9s} | {'faster':18s} | max |diff|")
    print(header)
    print("-" * len(header))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for model_id in args.models:
            for row in bench_model(model_id, args.threads, repeats, Path(tmp)):
                rows.append(row)
                print(f"{row.model:20s} {row.network:9s} {row.batch:5d} | {row.torch_ms:9.2f} | {row.ort_ms:9.2f} | "
                      f"{row.ratio:9.2f} | {row.faster:18s} | {row.max_abs_diff:.1e}", flush=True)
    print()
    print("faster per model (realistic batch):")
    for model_id in args.models:
        mine = [r for r in rows if r.model == model_id]
        realistic = [r for r in mine if r.batch == max(x.batch for x in mine if x.network == r.network)]
        print(f"  {model_id:20s} " + "; ".join(
            f"{'' if r.network == '-' else r.network + ' '}batch {r.batch}: {r.faster}" for r in realistic))
    print(machine_note())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
