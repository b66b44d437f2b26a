"""`python -m train breast_elastography export`: the generator's forward (image, and the Tsukuba
logits when the checkpoint has the head) as ONNX, refused unless it agrees with torch on phantom
B-mode images of every lesion kind.

A generator with the head has two outputs; TorchScript and Triton repositories are written for
one-in, one-out forwards and refuse it (`models.backends.export`), naming its tensors.
"""

from __future__ import annotations

from pathlib import Path

from models.elastography.wrapper import build
from train.tasks import ExportRequest, ExportResult


def task_export(request: ExportRequest) -> ExportResult:
    """ExportRequest -> ExportResult for breast_elastography."""
    from train.common.export import NetworkToExport, export_networks
    from train.elastography.task import DEMO_WEIGHTS  # the task imports this module: read it at call time
    from train.phantoms.breast import KINDS, demo_series

    model = build(Path(request.checkpoint) if request.checkpoint is not None else DEMO_WEIGHTS)
    signature = model.tensor_signature()
    # phantoms only, no blank image: on a constant input every InstanceNorm divides float rounding
    # by sqrt(eps), so torch and onnxruntime differ there by ~1e-4 (measured) without either
    # being wrong; on phantom B-mode they agree within ~2e-6
    x = model.prepare(demo_series(seed=3, kinds=KINDS)).tensor.numpy()
    return export_networks(request, [NetworkToExport(model.served, signature, {signature.input_name: x})])
