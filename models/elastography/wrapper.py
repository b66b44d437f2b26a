"""The virtual breast elastography model behind the sidecar's model seam.

B-mode US image in; out: a `GeneratedImage` per image (the source frame with the generated
strain elastogram drawn inside an elastography box around the lesion and the B-mode outside it,
as vendor strain elastography shows it (`models.elastography.box`: strain relative to the box,
box outline drawn), a colour bar "SOFT ... HARD" and the burned-in line "AI-GENERATED VIRTUAL
ELASTOGRAPHY - NOT FOR DIAGNOSIS")
and, when the checkpoint has the head, a "Tsukuba score" `Classification` with its five
probabilities.

`build(weights, options)` loads a checkpoint written by `train.elastography.task`
(`torch.load(weights_only=True)`): ``{"state_dict", "metadata"}``, metadata holding version,
channels, depth, heads, input_size, tsukuba (bool), seed and not_for_clinical_use.
Preprocessing is `transforms.dataset_to_input` at the checkpoint's input size, the call
training made on its phantom regions.

Options: ``torch_threads`` (int), ``alpha`` (opacity of the elastogram over the B-mode, default
0.65), ``input_size`` (network size without weights; default 256).

The network forward (`net.ServedGenerator`: B-mode (N, 1, S, S) -> image (N, 4, S, S) and, with
the head, Tsukuba logits (N, 5)) is the only part a backend replaces (`models.backends`); the
preprocessing, the softmax, the colour mapping and the composite stay here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from models.backends import TensorBackend, TensorSignature, TensorSpec
from models.backends.base import one_network
from models.backends.inprocess import InProcessTorch
from models.checkpoint import apply_torch_threads, card_from_metadata, load_checkpoint, untrained_metadata
from models.elastography import transforms as T
from models.elastography.box import StrainBox, place_box, relative_to_box
from models.elastography.concepts import VOCABULARY
from models.elastography.net import DEFAULT_CHANNELS, N_TSUKUBA, OUT_CHANNELS, ElastographyGenerator, ServedGenerator
from models.findings import Classification, Findings, GeneratedImage, ImageRef
from models.guard import DomainGuard, guard_verdicts

MODEL_ID = "breast_elastography"
NAME = "Virtual elastography"
MANUFACTURER = "DICOM AI sidecar project"
LABELS: tuple[str, ...] = tuple(f"Tsukuba {k}" for k in range(1, N_TSUKUBA + 1))
BURNED_IN = "AI-GENERATED VIRTUAL ELASTOGRAPHY - NOT FOR DIAGNOSIS"
#: GeneratedImage.description: the SC's series description keeps "<name> NOT FOR DIAGNOSIS"
DESCRIPTION = ("NOT FOR DIAGNOSIS (AI-generated virtual strain elastogram from the B-mode image; "
               "colour: soft red, intermediate green, hard blue)")
FINDING_SITE = "breast"
INTENDED_USE = (
    "Research and demonstration: shows what a strain elastogram of a breast B-mode image might "
    "look like (virtual strain elastography, colour E-mode image and mapped strain) with an "
    "estimated Tsukuba elasticity score. It is generated, not measured: it must not be used for "
    "diagnosis or to replace acquired elastography."
)
REFERENCE = (
    "GAN with a Transformer-UNet generator turning breast B-mode into strain elastography "
    "(seed study of issue 6: NCC 0.70 +- 0.08, authenticity 0.49, Tsukuba kappa 0.61 generated "
    "vs 0.57 real); pix2pix recipe of the open virtual elastography study (Nat Commun 2023)."
)
PUBLISHED: dict[str, float] = {
    "ncc_mean": 0.70, "ncc_sd": 0.08, "ncc_median": 0.70, "ncc_min": 0.50, "ncc_max": 0.86,
    "authenticity": 0.49, "tsukuba_kappa_generated": 0.61, "tsukuba_kappa_real": 0.57,
}
#: tensor names of the network forward, in exported ONNX files
INPUT_NAME, IMAGE_OUTPUT, TSUKUBA_OUTPUT = "bmode", "image", "tsukuba_logits"


class ElastographyError(ValueError):
    """A checkpoint or an image this model cannot use; the message says which and why."""


@dataclass(frozen=True)
class ElastographyBatch:
    """Prepared images: network input (N, 1, S, S), and per image its source, region and grey frame."""

    tensor: torch.Tensor
    refs: tuple[ImageRef, ...]
    regions: tuple[T.Region, ...]
    frames: tuple[npt.NDArray[np.float32], ...]
    lateralities: tuple[str | None, ...]
    skipped: int = 0


@dataclass(frozen=True)
class Generated:
    """Raw generator output for a batch: E-mode RGB (N, S, S, 3) and mapped strain (N, S, S) in
    [0, 1] (1 soft), and Tsukuba probabilities (N, 5) or None."""

    emode: npt.NDArray[np.float32]
    strain: npt.NDArray[np.float32]
    tsukuba: npt.NDArray[np.float64] | None


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, size_px))


def strain_box(frame_grey: npt.NDArray[np.float32], region: T.Region,
               strain: npt.NDArray[np.float32]) -> tuple[StrainBox, npt.NDArray[np.float32]]:
    """(the elastography box in region pixels, the mapped strain at region size) of one image."""
    mapped = T.resize(strain, region.rows, region.cols)
    crop = frame_grey[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1]
    return place_box(crop, mapped), mapped


def compose(frame_grey: npt.NDArray[np.float32], region: T.Region, strain: npt.NDArray[np.float32],
            alpha: float = 0.65, box: StrainBox | None = None) -> npt.NDArray[np.uint8]:
    """The source frame (grey, as RGB) with the mapped `strain` (S, S in [0, 1], 1 soft) colour-
    mapped relative to the elastography box and blended inside that box only (B-mode outside, box
    outline in white), a "SOFT ... HARD" colour bar beside the region and the burned-in notice.
    `box` None: placed by `models.elastography.box.place_box`."""
    rows, cols = frame_grey.shape
    placed, mapped = strain_box(frame_grey, region, strain)
    box = box or placed
    base = np.repeat((np.clip(frame_grey, 0, 1) * 255.0)[..., None], 3, axis=2)
    colour = T.colorize(relative_to_box(mapped, box)).astype(np.float64)
    by_, bx_ = box.slices()
    sl = (slice(region.y0 + by_.start, region.y0 + by_.stop), slice(region.x0 + bx_.start, region.x0 + bx_.stop))
    base[sl] = alpha * colour[by_, bx_] + (1.0 - alpha) * base[sl]
    y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
    base[[y0, y1], x0 : x1 + 1] = 255.0  # the box outline, as consoles draw it
    base[y0 : y1 + 1, [x0, x1]] = 255.0
    out = np.clip(np.rint(base), 0, 255).astype(np.uint8)

    bar_w = max(6, min(16, region.cols // 24))
    bar_h = max(24, region.rows // 2)
    label_h = max(8, min(14, rows // 40))
    right_room = cols - 1 - region.x1
    bx = region.x1 + 4 if right_room >= bar_w + 8 else region.x1 - bar_w - 2
    by = region.y0 + max(label_h + 4, (region.rows - bar_h) // 2)
    bar_h = min(bar_h, rows - by - label_h - 4)
    if bar_h >= 8:
        out[by : by + bar_h, bx : bx + bar_w] = T.colour_bar(bar_h, bar_w)
    image = Image.fromarray(out, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = _font(label_h)
    tx = max(0, min(bx - 2, cols - 4 * label_h))
    draw.text((tx, by - label_h - 2), "SOFT", fill=(255, 255, 255), font=font)
    if bar_h >= 8:
        draw.text((tx, by + bar_h + 1), "HARD", fill=(255, 255, 255), font=font)
    notice_h = max(8, min(16, rows // 32))
    text_font = _font(notice_h)
    width = draw.textlength(BURNED_IN, font=text_font)
    while width > cols - 4 and notice_h > 6:
        notice_h -= 1
        text_font = _font(notice_h)
        width = draw.textlength(BURNED_IN, font=text_font)
    ny = rows - notice_h - 4
    draw.rectangle((0, ny - 2, cols - 1, rows - 1), fill=(0, 0, 0))
    draw.text((2, ny), BURNED_IN, fill=(255, 255, 0), font=text_font)
    return np.asarray(image, dtype=np.uint8).copy()


class ElastographyModel:
    """Transformer-UNet virtual elastography; `predict` answers per image."""

    def __init__(self, net: ElastographyGenerator, metadata: Mapping[str, Any], alpha: float = 0.65) -> None:
        self.net = net.eval()
        self.served = ServedGenerator(self.net).eval()
        self.metadata = dict(metadata)
        self.guard = DomainGuard.from_metadata(metadata)
        self.size = int(metadata.get("input_size", T.SIZE))
        self.alpha = float(alpha)
        self.card = card_from_metadata(
            metadata, id=MODEL_ID, name=NAME, manufacturer=MANUFACTURER, intended_use=INTENDED_USE,
            labels=LABELS, reference=REFERENCE, published=PUBLISHED, vocabulary=VOCABULARY)
        self.backend: TensorBackend = InProcessTorch(self.served, self.tensor_signature())

    def prepare(self, datasets: Sequence[Dataset]) -> ElastographyBatch:
        """B-mode images -> one batch; elastography or Doppler images are left out (counted)."""
        tensors, refs, regions, frames, lats = [], [], [], [], []
        skipped = 0
        for ds in datasets:
            if T.is_elastography_or_doppler(ds):
                skipped += 1
                continue
            x, region, grey = T.dataset_to_input(ds, self.size)
            tensors.append(x)
            refs.append(ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
            regions.append(region)
            frames.append(grey)
            lat = str(ds.get("ImageLaterality") or ds.get("Laterality") or "") or None
            lats.append(lat if lat in ("L", "R") else None)
        if not tensors:
            raise ElastographyError("no B-mode image to prepare (elastography and Doppler images are not inputs)")
        return ElastographyBatch(torch.from_numpy(np.stack(tensors)), tuple(refs), tuple(regions),
                                 tuple(frames), tuple(lats), skipped)

    def guard_inputs(self, batch: ElastographyBatch) -> tuple[list[np.ndarray], list[ImageRef]]:
        """The prepared inputs the domain guard checks (what the network sees), with their sources."""
        return list(batch.tensor.numpy()), list(batch.refs)

    def tensor_signature(self) -> TensorSignature:
        """B-mode (1, S, S) in; the image (4, S, S) out, and the Tsukuba logits (5,) when the
        generator has the head; the card version."""
        head = (TensorSpec(TSUKUBA_OUTPUT, (N_TSUKUBA,)),) if self.net.tsukuba is not None else ()
        return TensorSignature(MODEL_ID, self.card.version, INPUT_NAME, (1, self.size, self.size), IMAGE_OUTPUT,
                               (OUT_CHANNELS, self.size, self.size), extra_outputs=head)

    def tensor_signatures(self) -> tuple[TensorSignature, ...]:
        """The one network's signature (the seam's `SwappableForward`)."""
        return (self.tensor_signature(),)

    def use_backend(self, backend: TensorBackend, network: str = "") -> None:
        """Run every later forward on `backend` (onnxruntime) instead of `self.served`."""
        one_network(MODEL_ID, network)
        self.backend = backend

    def outputs(self, tensor: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """The network forward on the configured backend: the image and, with the head, the
        Tsukuba logits (float32, by name)."""
        x = tensor.numpy() if isinstance(tensor, torch.Tensor) else tensor
        return self.backend.run_named({INPUT_NAME: x})

    def generate(self, tensor: torch.Tensor) -> Generated:
        """Run the generator (and the Tsukuba head) on (N, 1, S, S) inputs in [-1, 1]."""
        answer = self.outputs(tensor)
        arr = answer[IMAGE_OUTPUT]
        emode = T.from_unit(arr[:, :3]).transpose(0, 2, 3, 1)
        strain = T.from_unit(arr[:, 3])
        probs = None
        logits = answer.get(TSUKUBA_OUTPUT)
        if logits is not None and bool(self.metadata.get("tsukuba", True)):
            probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        return Generated(np.ascontiguousarray(emode), strain, probs)

    def predict(self, batch: ElastographyBatch) -> Findings:
        """One composited elastogram per image, plus a Tsukuba score when the head exists."""
        gen = self.generate(batch.tensor)
        images, scores = [], []
        for i, ref in enumerate(batch.refs):
            pixels = compose(batch.frames[i], batch.regions[i], gen.strain[i], self.alpha)
            images.append(GeneratedImage(pixels=pixels, description=DESCRIPTION, source=ref, photometric="RGB"))
            if gen.tsukuba is not None:
                p = gen.tsukuba[i] / gen.tsukuba[i].sum()
                probs = {label: float(min(max(v, 0.0), 1.0)) for label, v in zip(LABELS, p, strict=True)}
                scores.append(Classification(label=LABELS[int(np.argmax(p))], probabilities=probs,
                                             source=ref, finding_site=FINDING_SITE,
                                             laterality=batch.lateralities[i]))
        notes = ["AI-generated virtual elastography from the B-mode image: NOT FOR DIAGNOSIS",
                 "strain shown inside the elastography box placed by the model around the lesion "
                 "candidate, relative to the box (soft red, intermediate green, hard blue)"]
        if gen.tsukuba is not None:
            notes.append("Tsukuba score estimated by the model's head, as if a lesion were in the field")
        if batch.skipped:
            notes.append(f"{batch.skipped} elastography or Doppler image(s) not used as input")
        return Findings(model_id=MODEL_ID, model_version=self.card.version, classifications=tuple(scores),
                        images=tuple(images), not_for_clinical_use=self.card.not_for_clinical_use,
                        notes=tuple(notes), domain=guard_verdicts(self.guard, *self.guard_inputs(batch)))

    def warm_up(self) -> None:
        """One forward pass on zeros, so the first image does not pay for allocation."""
        self.backend.run_named({INPUT_NAME: np.zeros((1, 1, self.size, self.size), dtype=np.float32)})


def network_from(metadata: Mapping[str, Any]) -> ElastographyGenerator:
    """The generator a checkpoint's metadata describes."""
    return ElastographyGenerator(tuple(metadata.get("channels", DEFAULT_CHANNELS)),
                                 depth=int(metadata.get("depth", 2)), heads=int(metadata.get("heads", 4)),
                                 tsukuba=bool(metadata.get("tsukuba", True)))


def build(weights: Path | None = None, options: Mapping[str, Any] | None = None) -> ElastographyModel:
    """The factory the registry calls: load `weights` (or an untrained net) and apply `options`."""
    opts = dict(options or {})
    apply_torch_threads(opts)
    if weights is not None:
        state, metadata = load_checkpoint(Path(weights), ElastographyError, "a breast_elastography checkpoint")
        net = network_from(metadata)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ElastographyError(f"{weights}: weights do not fit the network in its metadata") from exc
    else:
        metadata = untrained_metadata(tsukuba=True, input_size=int(opts.get("input_size", T.SIZE)),
                                      channels=list(DEFAULT_CHANNELS))
        torch.manual_seed(0)
        net = network_from(metadata)
    alpha = float(opts.get("alpha", 0.65))
    if not 0.0 < alpha <= 1.0:
        raise ElastographyError(f"alpha {alpha} must lie in (0, 1]")
    return ElastographyModel(net, metadata, alpha)
