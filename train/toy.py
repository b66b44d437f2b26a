"""The toy task: a tiny CNN tells a bright disc from a ring, end to end in seconds.

It exercises the whole harness the way a clinical model does — phantom DICOM files, a label CSV,
`build_manifest`, a patient-level split, `ManifestDataset`, `fit_classifier`, `write_report`
and `write_model_card` — so a change that breaks any of them shows up here first. Its weights
mean nothing clinically.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import torch
from torch import nn
from torch.utils.data import DataLoader

from train.common.cards import write_model_card
from train.common.data import ManifestDataset, class_index_target
from train.common.loops import fit_classifier, load_weights, predict_scores
from train.common.manifest import Manifest, ManifestRow, build_manifest
from train.common.reports import write_report
from train.common.seeding import seed_everything, torch_generator
from train.common.splits import patient_split
from train.common.trainer import FitConfig, FitResult
from train.common.weights import sha256_of
from train.phantoms import dicom_writer, toolkit
from train.tasks import (
    CardRequest,
    DemoWeightsRequest,
    EvaluateRequest,
    FitRequest,
    TaskSpec,
    register_task,
)

CLASSES = ("ring", "disc")
SIZE = 32
N_IMAGES = 240
IMAGES_PER_PATIENT = 2


def toy_image(label: int, generator: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One uint8 image: a filled disc (label 1) or a ring (label 0) at a random place, noisy."""
    center = (generator.uniform(0.35, 0.65) * size, generator.uniform(0.35, 0.65) * size)
    outer = generator.uniform(0.2, 0.3) * size
    if label == 1:
        mask = toolkit.ellipse_mask((size, size), center, (outer, outer))
    else:
        mask = toolkit.ring_mask((size, size), center, outer * 0.6, outer)
    image = 0.15 + 0.6 * mask + generator.normal(0.0, 0.08, (size, size))
    return toolkit.to_uint(image, bits=8, lo=0.0, hi=1.0)


def write_phantoms(folder: Path, *, seed: int, n_images: int = N_IMAGES) -> Manifest:
    """Write toy DICOM images and labels.csv into `folder`, build a split manifest.csv."""
    if folder.exists():
        shutil.rmtree(folder)
    images = folder / "dicom"
    generator = toolkit.rng(seed)
    labels_path = folder / "labels.csv"
    images.mkdir(parents=True)
    with labels_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sop_instance_uid", "label"])
        for i in range(n_images):
            label = int(generator.integers(0, 2))
            patient = f"PH-{i // IMAGES_PER_PATIENT:04d}"
            uid = dicom_writer.phantom_uid("toy", str(seed), str(i))
            subject = dicom_writer.Subject(
                patient_id=patient, patient_name="PHANTOM^TOY",
                study_uid=dicom_writer.phantom_uid("toy-study", str(seed), patient))
            region = dicom_writer.UsRegion(0, 0, SIZE - 1, SIZE - 1, 0.02, 0.02)
            ds = dicom_writer.us_image(
                toy_image(label, generator), regions=[region],
                subject=subject, sop_instance_uid=uid, instance_number=i + 1,
                series_uid=dicom_writer.phantom_uid("toy-series", str(seed), patient))
            dicom_writer.write(ds, images / f"{i:04d}.dcm")
            writer.writerow([uid, CLASSES[label]])
    manifest = build_manifest(images, labels_path, key="sop_instance_uid",
                              out_csv=folder / "manifest.csv")
    splits = patient_split(manifest.patient_ids(), manifest.label_texts(), (0.6, 0.2, 0.2), seed)
    manifest = manifest.with_splits([str(s) for s in splits])
    manifest.write(folder / "manifest.csv")
    return Manifest.read(folder / "manifest.csv")


def load(row: ManifestRow, root: Path) -> np.ndarray:
    """The toy's transform: a DICOM file to a (1, 32, 32) float image in [0, 1]."""
    path = Path(row.path) if Path(row.path).is_absolute() else root / row.path
    pixels = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0
    if pixels.shape != (SIZE, SIZE):
        raise ValueError(f"{path.name}: toy images are {SIZE}x{SIZE}, got {pixels.shape}")
    return pixels[None]


class ToyNet(nn.Module):
    """Two convolutions, global pooling, one logit (disc)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _manifest(path: Path | None, phantom_dir: Path, seed: int) -> Manifest:
    if path is not None:
        return Manifest.read(path)
    if (phantom_dir / "manifest.csv").exists():
        return Manifest.read(phantom_dir / "manifest.csv")
    return write_phantoms(phantom_dir, seed=seed)


def _loader(manifest: Manifest, split: str, batch_size: int, *, shuffle: bool, seed: int,
            num_workers: int = 0) -> DataLoader:
    part = manifest.split(split)
    if len(part) == 0:
        raise ValueError(f"the manifest has no rows in split {split!r}")
    dataset = ManifestDataset(part, lambda row: load(row, manifest.root),
                              target=class_index_target(CLASSES), cache=True)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch_generator(seed) if shuffle else None)


def fit(request: FitRequest) -> FitResult:
    """Train ToyNet on the train split, stop early on validation AUC."""
    seed_everything(request.config.seed)
    manifest = _manifest(request.manifest, request.out_dir / "phantoms", request.config.seed)
    model = ToyNet()
    train = _loader(manifest, "train", request.batch_size, shuffle=True,
                    seed=request.config.seed, num_workers=request.num_workers)
    val = _loader(manifest, "val", request.batch_size, shuffle=False, seed=request.config.seed)
    return fit_classifier(model, train, val, config=request.config, out_dir=request.out_dir,
                          task="binary", val_metric="auc", resume=request.resume)


def evaluate(request: EvaluateRequest) -> Path:
    """Score one split with the checkpoint and write the report (metrics.json, report.md)."""
    phantom_dir = request.checkpoint.parent / "phantoms"
    manifest = _manifest(request.manifest, phantom_dir, 0)
    model = ToyNet()
    load_weights(model, request.checkpoint)
    loader = _loader(manifest, request.split, request.batch_size, shuffle=False, seed=0)
    y_true, scores = predict_scores(model, loader, task="binary", device=request.device)
    write_report(request.out_dir, task="binary", y_true=y_true, y_score=scores,
                 class_names=CLASSES, title="Toy: disc vs ring (harness self-test)",
                 n_boot=200, seed=request.seed,
                 extra={"split": request.split, "checkpoint": request.checkpoint.name})
    return request.out_dir


def card(request: CardRequest) -> Path:
    """Write card.md and card.yaml from the evaluation's metrics.json."""
    write_model_card(
        request.out_dir, model_id="toy", version="0.1.0", name="Toy disc-vs-ring classifier",
        intended_use="Self-test of the training harness only; never routed, never clinical.",
        inputs_and_routing="32x32 single-frame US Image Storage phantoms; no routing rule.",
        labels=CLASSES, label_rule="disc when P(disc) >= 0.5",
        training_data="Seeded synthetic phantoms (train.toy.write_phantoms), 2 images per fake "
                      "patient, patient-level 60/20/20 split.",
        metrics=request.evaluation_dir / "metrics.json",
        limits=["Synthetic shapes only", "Not a clinical task"],
        weights_sha256=sha256_of(request.checkpoint))
    return request.out_dir


def demo_weights(request: DemoWeightsRequest) -> Path:
    """Fit from the seeded phantoms and save the weights (state_dict) where asked."""
    config = FitConfig(epochs=8, lr=3e-3, seed=request.seed, progress=False)
    fit(FitRequest(out_dir=request.work_dir, config=config))
    model = ToyNet()
    load_weights(model, request.work_dir / "best.pt")
    out = request.out_path or request.work_dir / "toy_weights.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return out


TASK = register_task(TaskSpec(
    name="toy",
    summary="tiny CNN, bright disc vs ring on phantoms (harness self-test, seconds)",
    fit=fit, evaluate=evaluate, card=card, demo_weights=demo_weights,
    default_config=FitConfig(epochs=8, lr=3e-3, patience=4),
))
