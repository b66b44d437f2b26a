"""The hand-joints model behind the sidecar's model seam: radiographs in, graded joints out.

`build(weights, options)` loads a checkpoint written by `train.hand_joints.task` with
`torch.load(weights_only=True)`: ``{"detector": state_dict, "grader": state_dict,
"metadata": {...}}`` (version, detector channels, grid, crop size, not_for_clinical_use).

Per radiograph: `transforms.hands_of` (grey levels, polarity, spacing, laterality, split,
mirror) -> detector heatmaps -> keypoints -> boxes from geometry -> crops -> grades. A hand of
unknown side is run both ways and the orientation the detector is surer of wins (the detector
only ever saw canonical right hands).

Which scheme is reported follows the clinical indication in the study / series / requested
procedure descriptions (`scheme_for`): rheumatoid arthritis -> SHS narrowing, hand
osteoarthritis -> KL, both or neither -> both. A joint scored by both schemes then has one
detection per scheme.

Options: ``scheme`` ("auto", "shs", "kl", "both"; default auto), ``min_confidence`` (joints
whose heatmap peak is below are not reported; default 0.1), ``torch_threads`` (int).

Two network forwards, each behind its own backend (`models.backends`): the detector (grids
(N, 1, G, G) -> heatmap logits (N, 21, G, G)) and the grader (crops (N, 1, C, C) and joint
indices (N,) int64 -> SHS and KL logits (N, 5) each). Cutting hands and crops, the spatial
softmax, keypoints, boxes and the softmax over grades stay here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset

from models.backends import TensorBackend, TensorSignature, TensorSpec
from models.backends.base import BackendUnavailable
from models.backends.inprocess import InProcessTorch
from models.checkpoint import (
    apply_torch_threads,
    card_from_metadata,
    float_state,
    read_checkpoint,
    untrained_metadata,
)
from models.findings import Classification, Detection, Findings, ImageRef, Measurement
from models.guard import DomainGuard, guard_verdicts
from models.hand_joints import joints as J, transforms as T
from models.hand_joints.concepts import VOCABULARY
from models.hand_joints.net import DetectorConfig, JointGrader, build_detector

MODEL_ID = "hand_joints"
CHECKPOINT_KEYS: tuple[str, ...] = ("detector", "grader", "metadata")
NAME = "Hand radiograph joint detection and grading (SHS narrowing, KL)"
MANUFACTURER = "DICOM AI sidecar project"
INTENDED_USE = (
    "Second reader for hand radiographs (PA, CR or DX): localises the joints the modified "
    "Sharp/van der Heijde narrowing score (rheumatoid arthritis) and the Kellgren-Lawrence "
    "grade (hand osteoarthritis) read, proposes a grade per joint and its healthy/mild/severe "
    "class, and sums them per hand. A radiologist reviews every joint; it does not diagnose."
)
REFERENCE = (
    "Deep learning detection of the scored joints on single-hand radiographs and grading of "
    "SHS joint space narrowing (RA, 960 images / 509 patients) and KL (hand OA, 216 images / "
    "112 patients), reported as healthy / mild / severe with PR-AUC (seed study of issue 7)."
)
PUBLISHED: dict[str, float] = {
    "ra.pr_auc.healthy": 0.907, "ra.pr_auc.mild": 0.763, "ra.pr_auc.severe": 0.766,
    "ra.pr_auc.all": 0.812,
    "oa.pr_auc.healthy": 0.945, "oa.pr_auc.mild": 0.938, "oa.pr_auc.severe": 0.869,
    "oa.pr_auc.all": 0.917,
}
LABELS: tuple[str, ...] = (*J.grade_labels(J.SHS), *J.grade_labels(J.KL), *J.THREE_CLASSES)
#: the two networks a backend can serve, and their tensor names in exported ONNX files
DETECTOR, GRADER = "detector", "grader"
NETWORKS: tuple[str, str] = (DETECTOR, GRADER)
GRIDS, HEATMAPS = "grids", "heatmaps"
CROPS, JOINT_INDEX, SHS_LOGITS, KL_LOGITS = "crops", "joints", "shs_logits", "kl_logits"

_RA = re.compile(r"rheumat|\bRA\b|sharp|heijde|svdh|erosi|polyarthrit", re.IGNORECASE)
_OA = re.compile(r"osteoarth|arthros|\bOA\b|kellgren|\bKL\b|heberden|bouchard|rhizarthr", re.IGNORECASE)
_INDICATION_KEYWORDS = ("StudyDescription", "SeriesDescription", "RequestedProcedureDescription",
                        "ReasonForTheRequestedProcedure", "AdmittingDiagnosesDescription",
                        "ProtocolName", "PerformedProcedureStepDescription")


class HandJointsError(ValueError):
    """A checkpoint or option this model cannot use; the message says which and why."""


def indication_text(ds: Dataset) -> str:
    """The free text that may carry the clinical indication (descriptions, request items)."""
    parts = [str(ds.get(k, "") or "") for k in _INDICATION_KEYWORDS]
    for seq in ("RequestAttributesSequence",):
        for item in ds.get(seq, []) or []:
            parts += [str(item.get(k, "") or "") for k in _INDICATION_KEYWORDS]
    return " ".join(parts)


def scheme_for(ds: Dataset, option: str = "auto") -> tuple[str, ...]:
    """The schemes to report: the option if fixed, else by indication (RA -> SHS, OA -> KL)."""
    if option in (J.SHS, J.KL):
        return (option,)
    if option == "both":
        return J.SCHEMES
    if option != "auto":
        raise HandJointsError(f"scheme option must be auto, shs, kl or both, got {option!r}")
    text = indication_text(ds)
    ra, oa = bool(_RA.search(text)), bool(_OA.search(text))
    if ra and not oa:
        return (J.SHS,)
    if oa and not ra:
        return (J.KL,)
    return J.SCHEMES


@dataclass(frozen=True)
class JointResult:
    """One joint of one hand: where (source pixels), how sure, and the grade probabilities."""

    name: str
    point: tuple[float, float]  # (col, row) pixel-centre coordinates of the source image
    box: tuple[float, float, float, float]  # DICOM continuous coordinates of the source image
    confidence: float
    p_shs: np.ndarray  # (5,)
    p_kl: np.ndarray  # (5,)


@dataclass(frozen=True)
class HandResult:
    """All joints of one hand and the side it was reported as."""

    laterality: str
    side_inferred: bool
    joints: tuple[JointResult, ...]


#: grid pixels; confidence = exp(-spread / SPREAD_SCALE) of a joint's probability map
SPREAD_SCALE = 30.0


def locate(detector: TensorBackend, grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, G, G) detector inputs -> keypoints (N, K, 2) as grid (x, y) and confidences (N, K).

    Each channel is a spatial softmax, trained by integral regression (`spatial_softmax`), so the
    keypoint is its expectation (the soft-argmax), exactly what training optimised. The
    confidence is exp(-spread / SPREAD_SCALE), spread being the RMS distance of the map's mass
    from that point: a focused map is a sure joint, a diffuse one (wrong side, not a hand) not.
    """
    prob = spatial_softmax(torch.from_numpy(detector.run(grids))).double()
    _n, _k, h, w = prob.shape
    xs = torch.arange(w, dtype=torch.float64)
    ys = torch.arange(h, dtype=torch.float64)
    px, py = prob.sum(2), prob.sum(3)  # marginals over rows -> (N, K, W), over columns -> (N, K, H)
    ex, ey = (px * xs).sum(2), (py * ys).sum(2)
    spread = torch.sqrt((px * (xs - ex[..., None]) ** 2).sum(2) + (py * (ys - ey[..., None]) ** 2).sum(2))
    pts = torch.stack([ex, ey], dim=2).numpy()
    return pts, torch.exp(-spread / SPREAD_SCALE).numpy()


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits -> one probability map per channel (softmax over H x W)."""
    n, k, h, w = logits.shape
    return logits.reshape(n, k, h * w).softmax(dim=2).reshape(n, k, h, w)


def grade_crops(grader: TensorBackend, crops: np.ndarray, joint_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops (N, 1, C, C) and joint indices (N,) -> (P(SHS grade) (N, 5), P(KL grade) (N, 5))."""
    if len(crops) == 0:
        return np.zeros((0, J.N_GRADES)), np.zeros((0, J.N_GRADES))
    out = grader.run_named({CROPS: crops, JOINT_INDEX: np.asarray(joint_idx, dtype=np.int64)})
    shs, kl = torch.from_numpy(out[SHS_LOGITS]), torch.from_numpy(out[KL_LOGITS])
    return shs.softmax(1).double().numpy(), kl.softmax(1).double().numpy()


@dataclass(frozen=True)
class HandInputs:
    """What the two networks see for one hand: the detector grid of the orientation chosen, the
    joint crops cut at its keypoints and their joint indices, with the geometry to map back."""

    hand: T.Hand
    points: np.ndarray  # (K, 2) keypoints in hand pixels
    geometry: list[J.JointGeometry]  # per joint, from the keypoints
    confidence: np.ndarray  # (K,)
    side_inferred: bool
    grid: np.ndarray  # (1, G, G)
    crops: np.ndarray  # (K, 1, C, C)
    joint_index: np.ndarray  # (K,) int64


class HandJointsModel:
    """Keypoint UNet + crop grader; `predict` answers per joint, per hand and per image."""

    def __init__(self, detector: torch.nn.Module, grader: JointGrader, metadata: Mapping[str, Any],
                 scheme: str = "auto", min_confidence: float = 0.1) -> None:
        self.detector = detector.eval()
        self.grader = grader.eval()
        self.metadata = dict(metadata)
        self.guard = DomainGuard.from_metadata(metadata)
        self.scheme_option = scheme
        self.min_confidence = float(min_confidence)
        self.grid = int(metadata.get("grid", T.GRID))
        self.crop = int(metadata.get("crop", T.CROP))
        self.card = card_from_metadata(
            metadata, id=MODEL_ID, name=NAME, manufacturer=MANUFACTURER, intended_use=INTENDED_USE,
            labels=LABELS, reference=REFERENCE, published=PUBLISHED, vocabulary=VOCABULARY)
        detector_sig, grader_sig = self.tensor_signatures()
        self.backends: dict[str, TensorBackend] = {
            DETECTOR: InProcessTorch(self.detector, detector_sig), GRADER: InProcessTorch(self.grader, grader_sig)}

    # -- the backend seam: two networks ------------------------------------------------------

    def tensor_signatures(self) -> tuple[TensorSignature, TensorSignature]:
        """The detector's (grids -> heatmap logits) and the grader's (crops and joint indices ->
        SHS and KL logits) signatures, with the card version."""
        version, g, c = self.card.version, self.grid, self.crop
        detector = TensorSignature(MODEL_ID, version, GRIDS, (1, g, g), HEATMAPS, (len(J.JOINTS), g, g),
                                   network=DETECTOR)
        grader = TensorSignature(MODEL_ID, version, CROPS, (1, c, c), SHS_LOGITS, (J.N_GRADES,),
                                 extra_inputs=(TensorSpec(JOINT_INDEX, (), "int64"),),
                                 extra_outputs=(TensorSpec(KL_LOGITS, (J.N_GRADES,)),), network=GRADER)
        return detector, grader

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Run every later forward of `network` ("detector" or "grader") on `backend`."""
        if network not in NETWORKS:
            raise BackendUnavailable(f"{MODEL_ID} has the networks {', '.join(NETWORKS)}; "
                                     f"name one (not {network!r})")
        self.backends[network] = backend

    # -- the analysis one radiograph gets (training's evaluation calls this too) -------------

    def _orient(self, hand: T.Hand) -> tuple[T.Hand, np.ndarray, np.ndarray, np.ndarray, bool]:
        """Keypoints (hand pixels), confidences and the detector grid; unknown side: the
        orientation whose joint maps are the most focused (the detector only ever saw canonical
        right hands)."""
        candidates = [hand] if hand.laterality in ("L", "R") else [hand, hand.flipped()]
        best: tuple[T.Hand, np.ndarray, np.ndarray, np.ndarray] | None = None
        best_score = -1.0
        for cand in candidates:
            grid, gm = T.detector_grid(cand, self.grid)
            pts, conf = locate(self.backends[DETECTOR], grid[np.newaxis])
            score = float(np.mean(conf[0]))
            if score > best_score:
                best, best_score = (cand, gm.to_image(pts[0]), conf[0], grid), score
        assert best is not None
        return best[0], best[1], best[2], best[3], len(candidates) > 1

    def hand_inputs(self, ds: Dataset, laterality: str | None = None) -> list[HandInputs]:
        """Per hand of one radiograph: the detector's chosen grid, and the grader's crops and
        joint indices cut at the keypoints it found (what the two networks see)."""
        out = []
        for hand in T.hands_of(ds, laterality):
            oriented, pts, conf, grid, inferred = self._orient(hand)
            geometry = J.geometry_from_keypoints(pts)
            crops = np.stack([T.joint_crop(oriented.pixels, geo, name, self.crop)
                              for name, geo in zip(J.JOINTS, geometry, strict=True)])
            out.append(HandInputs(oriented, pts, geometry, conf, inferred, grid, crops, np.arange(len(J.JOINTS))))
        return out

    def analyse(self, ds: Dataset, laterality: str | None = None) -> list[HandResult]:
        """Every hand of one radiograph, joints in source coordinates."""
        out = []
        for inputs in self.hand_inputs(ds, laterality):
            oriented, pts, conf, geometry = inputs.hand, inputs.points, inputs.confidence, inputs.geometry
            p_shs, p_kl = grade_crops(self.backends[GRADER], inputs.crops, inputs.joint_index)
            src_pts = oriented.to_source(pts)
            results = []
            for k, (name, geo) in enumerate(zip(J.JOINTS, geometry, strict=True)):
                c0, r0, c1, r1 = J.joint_box(name, geo)
                box = oriented.box_to_source((c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5))
                results.append(JointResult(name, (float(src_pts[k, 0]), float(src_pts[k, 1])),
                                           _clip_box(box, ds), float(conf[k]), p_shs[k], p_kl[k]))
            side = oriented.laterality or ("L" if oriented.mirrored else "R")
            out.append(HandResult(side, inputs.side_inferred, tuple(results)))
        return out

    # -- the model seam ----------------------------------------------------------------------

    def prepare(self, datasets: Sequence[Dataset]) -> list[Dataset]:
        """The radiographs themselves: hands are cut and oriented in `predict`, per image."""
        usable = [ds for ds in datasets if "PixelData" in ds]
        if not usable:
            raise HandJointsError("no radiograph with pixel data to analyse")
        return usable

    def guard_inputs(self, batch: Sequence[Dataset]) -> tuple[list[np.ndarray], list[ImageRef]]:
        """What the domain guard checks: each hand's detector grid (the detector's own input)."""
        inputs: list[np.ndarray] = []
        refs: list[ImageRef] = []
        for ds in batch:
            ref = ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
            for hand in T.hands_of(ds):
                inputs.append(T.detector_grid(hand, self.grid)[0])
                refs.append(ref)
        return inputs, refs

    def predict(self, batch: Sequence[Dataset]) -> Findings:
        """One Detection per scored joint (per scheme), with its grade; sums per hand."""
        detections: list[Detection] = []
        measurements: list[Measurement] = []
        notes: list[str] = []
        for ds in batch:
            ref = ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
            schemes = scheme_for(ds, self.scheme_option)
            for hand in self.analyse(ds):
                side_word = {"L": "left", "R": "right"}[hand.laterality]
                if hand.side_inferred:
                    notes.append(f"Laterality not in the headers; {side_word} hand inferred from the image.")
                for scheme in schemes:
                    scored = [j for j in hand.joints
                              if j.name in J.SCHEME_JOINTS[scheme] and j.confidence >= self.min_confidence]
                    grades = []
                    for j in scored:
                        probs = j.p_shs if scheme == J.SHS else j.p_kl
                        grade = int(np.argmax(probs))
                        grades.append(grade)
                        three = J.three_class_probabilities(scheme, [float(v) for v in probs])
                        p = {lab: float(np.clip(v, 0, 1)) for lab, v in zip(J.grade_labels(scheme), probs, strict=True)}
                        p.update({lab: float(np.clip(v, 0, 1)) for lab, v in zip(J.THREE_CLASSES, three, strict=True)})
                        detections.append(Detection(
                            label=j.name, box=j.box, confidence=float(np.clip(j.confidence, 0, 1)), source=ref,
                            laterality=hand.laterality,
                            grade=Classification(label=J.grade_label(scheme, grade), probabilities=p, source=ref,
                                                 finding_site=J.JOINT_SITES[j.name], laterality=hand.laterality)))
                    measurements += _hand_measurements(scheme, side_word, grades, ref)
                    missing = len(J.SCHEME_JOINTS[scheme]) - len(scored)
                    if missing:
                        notes.append(f"{side_word} hand: {missing} {scheme.upper()} joint(s) below "
                                     f"confidence {self.min_confidence:g}, not scored.")
            notes.append("Schemes reported: " + ", ".join(s.upper() for s in schemes)
                         + " (chosen from the clinical indication; both when it is unknown).")
        return Findings(
            model_id=MODEL_ID, model_version=self.card.version, measurements=tuple(measurements),
            detections=tuple(detections), not_for_clinical_use=self.card.not_for_clinical_use,
            notes=tuple(dict.fromkeys(notes)), domain=guard_verdicts(self.guard, *self.guard_inputs(batch)))

    def warm_up(self) -> None:
        """One pass of each network on zeros, on its configured backend."""
        self.backends[DETECTOR].run(np.zeros((1, 1, self.grid, self.grid), dtype=np.float32))
        self.backends[GRADER].run_named({CROPS: np.zeros((1, 1, self.crop, self.crop), dtype=np.float32),
                                         JOINT_INDEX: np.zeros(1, dtype=np.int64)})


def _clip_box(box: tuple[float, float, float, float], ds: Dataset) -> tuple[float, float, float, float]:
    """The box kept inside the image (DICOM continuous coordinates 0..Columns, 0..Rows)."""
    cols, rows = float(ds.Columns), float(ds.Rows)
    c0, r0, c1, r1 = box
    c0, c1 = min(max(c0, 0.0), cols - 1.0), min(max(c1, 1.0), cols)
    r0, r1 = min(max(r0, 0.0), rows - 1.0), min(max(r1, 1.0), rows)
    return (c0, r0, max(c1, c0 + 1.0), max(r1, r0 + 1.0))


def _hand_measurements(scheme: str, side: str, grades: Sequence[int], ref: ImageRef) -> list[Measurement]:
    """Per hand: the total (SHS narrowing score or KL sum) and the count of joints per grade and class."""
    name = "SHS narrowing total" if scheme == J.SHS else "KL sum"
    out = [Measurement(f"{side} hand {name}", float(sum(grades)), "1", ref)]
    counts = np.bincount(np.asarray(grades, dtype=int), minlength=J.N_GRADES) if grades else np.zeros(J.N_GRADES)
    prefix = "SHS JSN" if scheme == J.SHS else "KL"
    out += [Measurement(f"{side} hand joints {prefix} {g}", float(counts[g]), "1", ref) for g in range(J.N_GRADES)]
    classes = np.zeros(3)
    for g in range(J.N_GRADES):
        classes[J.THREE_CLASS[scheme][g]] += counts[g]
    out += [Measurement(f"{side} hand joints {prefix} {c}", float(v), "1", ref)
            for c, v in zip(J.THREE_CLASSES, classes, strict=True)]
    return out


def build_nets(metadata: Mapping[str, Any]) -> tuple[torch.nn.Module, JointGrader]:
    """Fresh networks shaped as `metadata` says."""
    cfg = DetectorConfig(channels=tuple(metadata.get("channels", DetectorConfig.channels)),
                         strides=tuple(metadata.get("strides", DetectorConfig.strides)),
                         num_res_units=int(metadata.get("num_res_units", DetectorConfig.num_res_units)))
    return build_detector(cfg), JointGrader(width=int(metadata.get("grader_width", 16)))


def build(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> HandJointsModel:
    """The factory the registry calls: load `weights` (or untrained nets) and apply `options`."""
    opts = dict(options or {})
    apply_torch_threads(opts)
    if weights is not None:
        blob = read_checkpoint(Path(weights), HandJointsError, "a hand_joints checkpoint", CHECKPOINT_KEYS)
        metadata = dict(blob["metadata"])
        detector, grader = build_nets(metadata)
        try:
            detector.load_state_dict(float_state(blob["detector"]))
            grader.load_state_dict(float_state(blob["grader"]))
        except RuntimeError as exc:
            raise HandJointsError(f"{weights}: weights do not fit the networks its metadata names") from exc
    else:
        metadata = untrained_metadata()
        detector, grader = build_nets(metadata)
    scheme = str(opts.get("scheme", "auto"))
    scheme_for(Dataset(), scheme)  # validates the option
    min_conf = float(opts.get("min_confidence", 0.1))
    if not 0.0 <= min_conf < 1.0:
        raise HandJointsError(f"min_confidence {min_conf} must lie in [0, 1)")
    return HandJointsModel(detector, grader, metadata, scheme, min_conf)
