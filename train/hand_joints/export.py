"""`python -m train hand_joints export`: the detector and the grader, one ONNX file each
(``hand_joints_detector.onnx``, ``hand_joints_grader.onnx``), each refused unless it agrees with
torch on what it sees for phantom radiographs: the detector every hand's grid in both
orientations (an unknown side is tried both ways), the grader the crops cut at the keypoints the
detector found, with their joint indices.

The grader takes two inputs (crops and int64 joint indices) and gives two outputs; TorchScript and
Triton repositories are written for one-in, one-out forwards and refuse it, naming its tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.hand_joints import transforms as T
from models.hand_joints.wrapper import CROPS, GRIDS, JOINT_INDEX, build
from train.tasks import ExportRequest, ExportResult


def task_export(request: ExportRequest) -> ExportResult:
    """ExportRequest -> ExportResult for hand_joints (two networks)."""
    from train.common.export import NetworkToExport, export_networks, with_zeros
    from train.hand_joints.task import DEMO_WEIGHTS  # the task imports this module: read it at call time
    from train.phantoms.hand import demo_series, hand_image

    model = build(Path(request.checkpoint) if request.checkpoint is not None else DEMO_WEIGHTS)
    detector_sig, grader_sig = model.tensor_signatures()
    datasets = [*demo_series(seed=2), hand_image(5, n_hands=2).dataset]
    grids, crops, joints = [], [], []
    for ds in datasets:
        for hand in T.hands_of(ds):
            grids += [T.detector_grid(h, model.grid)[0] for h in (hand, hand.flipped())]
        for inputs in model.hand_inputs(ds):
            crops.append(inputs.crops)
            joints.append(inputs.joint_index)
    return export_networks(request, [
        NetworkToExport(model.detector, detector_sig, {GRIDS: with_zeros(np.stack(grids))}),
        NetworkToExport(model.grader, grader_sig, {CROPS: np.concatenate(crops),
                                                   JOINT_INDEX: np.concatenate(joints).astype(np.int64)}),
    ])
