"""SR cost: time to build and encode a series SR (TID 1500) for N images, in process.

One LGE-style series job: one classification per image (two class probabilities) plus a series
summary, as the lge_qa model hands a series. Timed: `build_sr` (highdicom builds and validates
the document) and encoding it (`dcmwrite` to memory). Median of `--repeat` runs per size.

    python -m bench.sr_cost [--sizes 16 200] [--repeat 3]

Target (issue 15): a series SR must not cost seconds (< 1 s at 16 images, < 3 s at 200).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import pydicom

from models.base import ModelCard
from models.findings import Classification, Findings, ImageRef
from sidecar.results import build_sr
from tests.helpers.dicom_factory import make_mr_series

CARD = ModelCard(
    id="lge_qa", version="bench", name="LGE CMR slice certainty", manufacturer="bench",
    intended_use="bench", labels=("high_certainty", "low_certainty"),
)


def findings_for(sources: list[pydicom.Dataset], flagged_every: int = 8) -> Findings:
    """One classification per image (every `flagged_every`-th low certainty) and a summary."""
    items = []
    for i, ds in enumerate(sources):
        low = i % flagged_every == 0
        p = 0.8 if low else 0.1
        items.append(Classification(
            label="low_certainty" if low else "high_certainty",
            probabilities={"high_certainty": 1 - p, "low_certainty": p},
            source=ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)), uncertain=low,
            finding_site="left ventricle"))
    summary = Classification(label="low_certainty", probabilities={"high_certainty": 0.2, "low_certainty": 0.8},
                             uncertain=True, finding_site="left ventricle")
    return Findings(model_id="lge_qa", model_version="bench", classifications=tuple(items), summary=summary)


def measure(n: int, repeat: int) -> tuple[float, float, int]:
    """(median build ms, median encode ms, encoded bytes) for a series of `n` images."""
    sources = make_mr_series(n, seed=1)
    findings = findings_for(sources)
    builds, encodes, size = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        sr = build_sr(findings, sources, CARD, input_uid=str(sources[0].SeriesInstanceUID), kind="series")
        t1 = time.perf_counter()
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, sr, enforce_file_format=True)
        t2 = time.perf_counter()
        builds.append((t1 - t0) * 1000)
        encodes.append((t2 - t1) * 1000)
        size = buf.tell()
    return statistics.median(builds), statistics.median(encodes), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 200])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(" images | SR build ms | encode ms |  total ms |   bytes")
    for n in args.sizes:
        build, encode, size = measure(n, args.repeat)
        print(f" {n:6d} | {build:11.1f} | {encode:9.1f} | {build + encode:9.1f} | {size:7d}")


if __name__ == "__main__":
    main()
