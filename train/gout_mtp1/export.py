"""`python -m train gout_mtp1 export`: the ResNet-50 forward as ONNX or TorchScript (and a Triton
repository), refused unless it agrees with torch on phantom MTP1 images of every view.

The weights are stored in float16 and widened to float32 when loaded; the export is made from
that float32 module, so it takes and gives float32 like the other backends.
"""

from __future__ import annotations

from pathlib import Path

from models.gout_mtp1.wrapper import build
from train.tasks import ExportRequest, ExportResult


def task_export(request: ExportRequest) -> ExportResult:
    """ExportRequest -> ExportResult for gout_mtp1 (phantoms: normal and gouty, each view)."""
    from train.common.export import NetworkToExport, export_networks, with_zeros
    from train.gout_mtp1.task import DEMO_WEIGHTS  # the task imports this module: read it at call time
    from train.phantoms.mtp1 import case_dataset, demo_series, sample_cases

    model = build(Path(request.checkpoint) if request.checkpoint is not None else DEMO_WEIGHTS)
    signature = model.tensor_signature()
    datasets = [*demo_series(seed=1), *(case_dataset(c) for c in sample_cases(2, seed=7, abnormal_share=0.5))]
    x = with_zeros(model.prepare(datasets).tensor.numpy())
    return export_networks(request, [NetworkToExport(model.net, signature, {signature.input_name: x})])
