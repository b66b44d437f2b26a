"""`python -m train synovitis_<variant> export`: the variant's ResNet forward as ONNX or
TorchScript (and a Triton repository), refused unless it agrees with torch on phantom joints of
that variant (stills or cines, greyscale or power Doppler, grades 0-3).

The weights are stored in float16 and widened to float32 when loaded; the export is made from
that float32 module, so it takes and gives float32 like the other backends.
"""

from __future__ import annotations

from pathlib import Path

from models.synovitis.transforms import VARIANTS
from models.synovitis.wrapper import build
from train.tasks import ExportRequest, ExportResult


def task_export(variant: str, request: ExportRequest) -> ExportResult:
    """ExportRequest -> ExportResult for one synovitis variant."""
    from train.common.export import NetworkToExport, export_networks, with_zeros
    from train.phantoms.joint_us import case_dataset, sample_cases
    from train.synovitis.task import weights_path  # the task imports this module: read it at call time

    spec = VARIANTS[variant]
    weights = Path(request.checkpoint) if request.checkpoint is not None else weights_path(variant)
    model = build(variant, weights)
    signature = model.tensor_signature()
    cases = sample_cases(2, seed=11, joints_per_patient=2)
    x = with_zeros(model.prepare([case_dataset(c, doppler=spec.doppler, cine=spec.cine) for c in cases]).tensor.numpy())
    return export_networks(request, [NetworkToExport(model.net, signature, {signature.input_name: x})])
