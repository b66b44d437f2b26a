"""Train, evaluate and rebuild the demo weights of the virtual elastography model.

    python -m train breast_elastography demo-weights      (alias: python -m train elastography ...)
    python -m train breast_elastography evaluate --checkpoint models/elastography/weights/demo.pt

The open study's pix2pix recipe on paired phantoms (`train.phantoms.breast`): B-mode region ->
(E-mode RGB, mapped strain), `train.common.loops.fit_gan` with two PatchGAN discriminators (the
whole image and the lesion crop), adversarial + 100 x L1, Adam 2e-4 (0.5, 0.999), horizontal
flips, [-1, 1] scaling; a 70/15/15 split by phantom patient; early stopping on validation NCC.
The optional Tsukuba head is trained afterwards on the frozen generator's bottleneck tokens and
generated strain (`fit_classifier`, multiclass, quadratic-kappa early stopping).

Evaluation as published: zero-mean NCC of generated vs phantom strain (mean ± SD, median,
range), also for the colour E-mode image; SSIM; Cohen's kappa (unweighted and linear) between
the head's Tsukuba score and the phantom's.

A site trains and evaluates on its own pairs with `--manifest` (`manifest_arrays`): `path` is the
B-mode image, `label_target_path` the real strain elastography image of the same view,
`label_tsukuba` (1-5) and `label_box` ("x0 y0 x1 y1", B-mode frame pixels) are optional; see
`MANIFEST_COLUMNS_HELP`.

Every phantom region goes through `models.elastography.transforms.region_to_input` (and the
target through `target_to_tensor`), the code the sidecar runs after decoding and region crop.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from models.elastography import transforms as T
from models.elastography.net import (
    ElastographyGenerator,
    LesionCropDiscriminator,
    TrainingGenerator,
    WholeImageDiscriminator,
    count_parameters,
)
from models.elastography.wrapper import (
    INTENDED_USE,
    LABELS,
    MANUFACTURER,
    MODEL_ID,
    NAME,
    REFERENCE,
    build,
)
from train.common.loops import FitConfig, GanConfig, fit_classifier, fit_gan
from train.common.manifest import Manifest, ManifestError, ManifestRow
from train.common.metrics import cohen_kappa, ncc, ssim
from train.common.seeding import seed_everything
from train.common.splits import split_indices
from train.common.weights import save_state_and_metadata, sha256_of
from train.phantoms.breast import KINDS, BreastCase, breast_case

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "elastography"
DEMO_WEIGHTS = MODEL_DIR / "weights" / "demo.pt"
DEMO_SEED = 0
PUBLISHED_FOR_REPORT: dict[str, Any] = {
    "ncc": (0.70, 0.50, 0.86),  # mean, with the published range as the interval
    "ncc.median": 0.70,
    "tsukuba_kappa": 0.61,
}


@dataclass(frozen=True)
class DemoConfig:
    """What `demo-weights` trains: a small phantom cohort and net, about five CPU minutes."""

    seed: int = DEMO_SEED
    n_cases: int = 360
    input_size: int = 128
    channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    depth: int = 2
    heads: int = 4
    epochs: int = 4
    batch_size: int = 8
    max_steps_per_epoch: int | None = 25
    lr: float = 5e-4  # the recipe's 2e-4 barely moves in 180 CPU steps; betas stay (0.5, 0.999)
    head_epochs: int = 30
    torch_threads: int = 2


@dataclass(frozen=True)
class Arrays:
    """A cohort as network inputs (B-mode, lesion mask), targets, scores, kinds and patients."""

    x: np.ndarray  # (N, 2, S, S) float32: B-mode in [-1, 1], lesion mask {0, 1}
    y: np.ndarray  # (N, 4, S, S) float32 in [-1, 1]
    tsukuba: np.ndarray  # (N,) int64, 0 = no lesion
    kinds: np.ndarray  # (N,) str
    patients: np.ndarray  # (N,) str


def case_arrays(cases: Sequence[BreastCase], size: int) -> Arrays:
    """Phantom regions through the serving transforms (region_to_input, target_to_tensor)."""
    xs, ys = [], []
    for c in cases:
        mask = T.resize(c.lesion.astype(np.float32), size, size) > 0.5
        xs.append(np.concatenate([T.region_to_input(c.bmode, size), mask[None].astype(np.float32)]))
        ys.append(T.target_to_tensor(c.mapped, c.emode, size))
    return Arrays(np.stack(xs), np.stack(ys), np.array([c.tsukuba for c in cases], dtype=np.int64),
                  np.array([c.kind for c in cases]), np.array([c.patient_id for c in cases]))


def phantom_cohort(cfg: DemoConfig) -> tuple[Arrays, dict[str, np.ndarray]]:
    """The seeded cohort (smaller regions than the demo series, for speed) and its 70/15/15 split."""
    g = np.random.default_rng(cfg.seed)
    cases = []
    for i in range(cfg.n_cases):
        shape = (int(g.integers(200, 300)), int(g.integers(220, 330)))
        cases.append(breast_case(cfg.seed * 100_003 + i, shape=shape))
    data = case_arrays(cases, cfg.input_size)
    strata = np.array([KINDS.index(k) for k in data.kinds])
    return data, split_indices(data.patients, strata, (0.7, 0.15, 0.15), cfg.seed)


class _Pairs(Dataset[dict[str, torch.Tensor]]):
    """(image, target) pairs; training flips left-right (depth has a direction, width does not)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: bool) -> None:
        self.x, self.y, self.augment = torch.from_numpy(x), torch.from_numpy(y), augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.x[i], self.y[i]
        if self.augment and torch.rand(1).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return {"image": x, "target": y}


def _subset(a: Arrays, i: np.ndarray) -> Arrays:
    return Arrays(a.x[i], a.y[i], a.tsukuba[i], a.kinds[i], a.patients[i])


class _HeadOnFeatures(torch.nn.Module):
    """The Tsukuba head fed with precomputed (tokens, pooled strain) stacked on channels."""

    def __init__(self, generator: ElastographyGenerator) -> None:
        super().__init__()
        assert generator.tsukuba is not None
        self.head = generator.tsukuba

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f[:, :-1], f[:, -1:])


def head_features(gen: ElastographyGenerator, x: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Frozen generator -> (N, C + 1, h, w): bottleneck tokens and the generated strain, pooled."""
    gen.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch, :1])
            feats = gen.encode(xb)
            img = gen.decode(feats)
            tokens = feats[-1]
            strain = torch.nn.functional.adaptive_avg_pool2d(img[:, 3:4], (tokens.shape[-2], tokens.shape[-1]))
            out.append(torch.cat([tokens, strain], dim=1))
    return torch.cat(out).clone()


def fit_tsukuba_head(gen: ElastographyGenerator, train: Arrays, val: Arrays, cfg: DemoConfig,
                     out_dir: Path) -> float:
    """Train the head on lesion cases (score >= 1) with the generator frozen; best val kappa."""
    for p in gen.parameters():
        p.requires_grad_(False)
    assert gen.tsukuba is not None
    for p in gen.tsukuba.parameters():
        p.requires_grad_(True)
    tr, va = train.tsukuba > 0, val.tsukuba > 0
    f_tr, f_va = head_features(gen, train.x[tr]), head_features(gen, val.x[va])
    y_tr = torch.from_numpy(train.tsukuba[tr] - 1)
    y_va = torch.from_numpy(val.tsukuba[va] - 1)
    counts = np.bincount(y_tr.numpy(), minlength=5).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, counts.sum() / (5 * np.maximum(counts, 1)), 0.0),
                           dtype=torch.float32)
    model = _HeadOnFeatures(gen)
    loader = DataLoader(TensorDataset(f_tr, y_tr), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    result = fit_classifier(model, loader, DataLoader(TensorDataset(f_va, y_va), batch_size=64),
                            config=FitConfig(epochs=cfg.head_epochs, lr=3e-3, patience=8, seed=cfg.seed,
                                             progress=False, scheduler="cosine"),
                            out_dir=out_dir, task="multiclass", class_weights=weights, val_metric="kappa")
    for p in gen.parameters():
        p.requires_grad_(True)
    return float(result.best_metric)


def train_generator(cfg: DemoConfig, train: Arrays, val: Arrays, out_dir: Path,
                    gan: GanConfig | None = None, resume: Path | None = None) -> tuple[ElastographyGenerator, Any]:
    """fit_gan with the whole-image and lesion-crop PatchGANs; returns (generator, FitResult)."""
    seed_everything(cfg.seed)
    gen = ElastographyGenerator(cfg.channels, cfg.depth, cfg.heads, tsukuba=True)
    discriminators = {"whole": WholeImageDiscriminator(), "lesion": LesionCropDiscriminator(crop=48)}
    train_loader = DataLoader(_Pairs(train.x, train.y, True), batch_size=cfg.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(_Pairs(val.x, val.y, False), batch_size=32)
    config = gan or GanConfig(epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, patience=0, progress=False,
                              max_steps_per_epoch=cfg.max_steps_per_epoch, device="cpu")
    result = fit_gan(TrainingGenerator(gen), discriminators, train_loader, val_loader, config=config,
                     out_dir=out_dir, resume=resume)
    return gen, result


def metadata_of(cfg: DemoConfig, version: str, trained_on: str) -> dict[str, Any]:
    return {"model_id": MODEL_ID, "version": version, "channels": list(cfg.channels), "depth": cfg.depth,
            "heads": cfg.heads, "input_size": cfg.input_size, "tsukuba": True, "seed": cfg.seed,
            "not_for_clinical_use": True, "trained_on": trained_on}


# --- evaluation ----------------------------------------------------------------------------------


def evaluate_arrays(weights: Path, data: Arrays, out_dir: Path, seed: int = 0,
                    title: str = "Virtual elastography on held-out phantoms") -> dict[str, Any]:
    """NCC / SSIM of generated vs phantom strain and E-mode, Tsukuba kappa; writes the report."""
    from train.common.reports import write_generation_report

    model = build(weights, {})
    nccs, ssims, nccs_rgb, pred_scores = [], [], [], []
    examples: list[tuple[Any, ...]] = []
    for i in range(0, len(data.x), 16):
        gen = model.generate(torch.from_numpy(data.x[i : i + 16, :1]))
        for j in range(len(gen.strain)):
            k = i + j
            real = T.from_unit(data.y[k, 3])
            real_rgb = T.from_unit(data.y[k, :3]).transpose(1, 2, 0)
            nccs.append(ncc(gen.strain[j], real))
            ssims.append(ssim(gen.strain[j], real, data_range=1.0))
            nccs_rgb.append(ncc(gen.emode[j], real_rgb))
            if gen.tsukuba is not None:
                pred_scores.append(int(np.argmax(gen.tsukuba[j])) + 1)
            if len(examples) < 4 and data.tsukuba[k] > 0:
                examples.append((T.from_unit(data.x[k, 0]), gen.emode[j], real_rgb))
    v = np.asarray(nccs)
    finite = v[np.isfinite(v)]
    lesion = data.tsukuba > 0
    extra: dict[str, Any] = {
        "ncc_strain_mean_sd_median_range": (f"{finite.mean():.3f} ± {finite.std(ddof=1):.3f}, median "
                                            f"{np.median(finite):.3f}, range {finite.min():.3f}–{finite.max():.3f}"),
        "ncc_emode_mean_sd": f"{np.nanmean(nccs_rgb):.3f} ± {np.nanstd(nccs_rgb, ddof=1):.3f}",
        "published_ncc": "0.70 ± 0.08, median 0.70, range 0.50–0.86 (seed study)",
        "n_images": len(v),
        "weights": str(weights),
        "version": model.card.version,
    }
    kappa = float("nan")
    head_untrained = "NOT trained" in str(model.metadata.get("trained_on", ""))
    if head_untrained:
        extra["tsukuba_kappa"] = "not reported: the Tsukuba head was not trained (no scores in training)"
    if pred_scores and lesion.any() and not head_untrained:
        truth = data.tsukuba[lesion]
        pred = np.asarray(pred_scores)[lesion]
        kappa = cohen_kappa(truth, pred, labels=[1, 2, 3, 4, 5])
        extra["tsukuba_kappa"] = round(kappa, 3)
        extra["tsukuba_kappa_linear"] = round(cohen_kappa(truth, pred, "linear", labels=[1, 2, 3, 4, 5]), 3)
        extra["tsukuba_exact_agreement"] = round(float(np.mean(truth == pred)), 3)
        extra["published_tsukuba_kappa"] = "0.61 between readers on generated images (0.57 on real)"
    for kind in KINDS:
        m = data.kinds == kind
        if m.any():
            extra[f"ncc_{kind}"] = round(float(np.nanmean(v[m])), 3)
    report = write_generation_report(out_dir, nccs, ssims, PUBLISHED_FOR_REPORT, examples, extra=extra,
                                     title=title, seed=seed, n_boot=500)
    return {"ncc_mean": float(finite.mean()), "ncc_sd": float(finite.std(ddof=1)),
            "ncc_median": float(np.median(finite)), "ncc_min": float(finite.min()),
            "ncc_max": float(finite.max()), "ssim_mean": float(np.nanmean(ssims)),
            "ncc_emode_mean": float(np.nanmean(nccs_rgb)), "tsukuba_kappa": kappa,
            "report": str(report.out_dir)}


def write_card(sha: str, metrics_json: Path, cfg: DemoConfig, version: str, n_params: int) -> None:
    from train.common.cards import write_model_card

    write_model_card(
        MODEL_DIR, model_id=MODEL_ID, version=version, name=NAME, intended_use=INTENDED_USE,
        inputs_and_routing=(
            "Single-frame (or first frame of a cine) breast B-mode US images, routed by conf/routes.yaml "
            "(Modality US with BodyPartExamined BREAST, or 'breast' in the series description or "
            "protocol), never an image that is already an elastogram (ImageType / description cues "
            "ELASTO, STRAIN, E-MODE, SWE, SHEAR) or carries Doppler (us.has_doppler). Preprocessing "
            "(models/elastography/transforms.py): decode to grey, crop to the first 2D tissue region "
            "of the US Region Calibration (else the non-dark bounding box), resize to "
            f"{cfg.input_size}x{cfg.input_size}, scale to [-1, 1]. Output: a Secondary Capture in a new "
            "series of the source study (same rows, columns and region calibration; the elastogram "
            "shown only inside an elastography box the model places around the lesion candidate "
            "(darker and harder than its surroundings; central at mid-depth without one), strain "
            "relative to the box, B-mode outside, as vendor strain elastography shows it; with a "
            "SOFT-HARD colour bar and the burned-in line "
            "'AI-GENERATED VIRTUAL ELASTOGRAPHY - NOT FOR DIAGNOSIS') and a TID 1500 SR with the "
            "estimated Tsukuba score and its five probabilities."),
        labels=LABELS,
        label_rule=("Tsukuba elasticity score (Itoh et al. 2006): 1 the whole lesion strains; 2 most of it "
                    "strains, with stiff areas; 3 only its periphery strains; 4 the whole lesion is stiff; "
                    "5 the lesion and its surroundings are stiff. The cyst's layered (blue-green-red) "
                    "pattern counts as 1."),
        training_data=(f"Paired phantoms (train/phantoms/breast.py), seed {cfg.seed}: {cfg.n_cases} cases "
                       "(normal, benign, malignant, cyst, shadowing mass), 70/15/15 split by phantom patient. "
                       f"Generator channels {list(cfg.channels)}, {cfg.depth} Transformer blocks "
                       f"({n_params} parameters), {cfg.epochs} epochs of at most {cfg.max_steps_per_epoch} "
                       f"steps of {cfg.batch_size} images, Adam lr {cfg.lr} (0.5, 0.999) - the recipe's "
                       "2e-4 barely moves in so few CPU steps - adversarial + 100 x L1; Tsukuba head "
                       f"{cfg.head_epochs} epochs at most."),
        metrics=metrics_json,
        limits=[
            "Trained and tested on synthetic phantoms only; says nothing about patients or real elastography.",
            "A generated elastogram is not a measurement of stiffness: not for diagnosis, never a "
            "substitute for acquired elastography.",
            "Demo training is a few CPU minutes at 128x128: the generated maps are coarse.",
            "The Tsukuba head scores the whole field as if it held a lesion; on a normal image its "
            "score has no meaning.",
            "The published reader study (authenticity 0.49, BI-RADS AUC) has no phantom counterpart.",
        ],
        not_for_clinical_use=True, weights_sha256=sha, manufacturer=MANUFACTURER, reference=REFERENCE,
    )


def demo_weights(cfg: DemoConfig = DemoConfig(), out: Path = DEMO_WEIGHTS, report_dir: Path | None = None,
                 card: bool = True) -> dict[str, Any]:
    """Rebuild the demo weights from phantoms with a fixed seed; evaluate on the test split."""
    torch.set_num_threads(cfg.torch_threads)
    start = time.perf_counter()
    data, idx = phantom_cohort(cfg)
    print(f"cohort: {len(data.x)} cases, " + ", ".join(f"{k} {len(v)}" for k, v in idx.items())
          + f"; {time.perf_counter() - start:.0f} s", flush=True)
    train, val, test = (_subset(data, idx[k]) for k in ("train", "val", "test"))
    with tempfile.TemporaryDirectory() as tmp:
        gen, result = train_generator(cfg, train, val, Path(tmp) / "gan")
        print(f"gan: best val NCC {result.best_metric:.3f} at epoch {result.best_epoch}; "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        kappa = fit_tsukuba_head(gen, train, val, cfg, Path(tmp) / "head")
        print(f"tsukuba head: best val kappa {kappa:.3f}; {time.perf_counter() - start:.0f} s", flush=True)
    version = f"0.1.0-demo.phantom.seed{cfg.seed}"
    gen.eval()
    sha = save_state_and_metadata(gen, metadata_of(cfg, version, f"phantoms: {cfg.n_cases} cases"), out)
    report = report_dir or Path(tempfile.mkdtemp(prefix="elastography_eval_"))
    summary = evaluate_arrays(out, test, report, seed=cfg.seed)
    if card:
        write_card(sha, report / "metrics.json", cfg, version, count_parameters(gen))
    summary.update({"weights": str(out), "sha256": sha, "bytes": out.stat().st_size,
                    "seconds": round(time.perf_counter() - start, 1)})
    return summary


# --- a site's own pairs: the manifest ---------------------------------------------------------

TARGET_COLUMN, TSUKUBA_COLUMN, BOX_COLUMN = "label_target_path", "label_tsukuba", "label_box"
MANIFEST_COLUMNS_HELP = (
    "Manifest of real pairs (train/common/manifest.py): path = the B-mode image (DICOM file or PNG), "
    "patient_id, split (train/val for fit, e.g. test for evaluate), label_target_path = the strain "
    "elastography image of the same view (DICOM or PNG; the same frame as the B-mode, cropped at its "
    "region, or already the region; colour in the console map red soft .. blue hard, or grey strain "
    "1 soft .. 0 hard), optional label_tsukuba (1-5) and label_box ('x0 y0 x1 y1', B-mode frame pixels, "
    "inclusive)."
)
_COLOUR_LEVELS = np.linspace(0.0, 1.0, 101, dtype=np.float32)


def _read_pixels(path: Path) -> tuple[np.ndarray, Any]:
    """A DICOM (first frame) or PNG -> (pixels as stored, grey or RGB; the dataset or None)."""
    import pydicom
    from PIL import Image

    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "I;16", "I") else im), None
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise T.TransformError("no PixelData")
    arr = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        arr = (arr >> 8).astype(np.uint8) if arr.dtype != np.uint8 else arr
    elif photometric == "MONOCHROME1":
        arr = arr.max() - arr
    return np.asarray(arr), ds


def strain_from_colour(rgb: np.ndarray) -> np.ndarray:
    """Colour strain image (H, W, 3) in [0, 1] -> mapped strain (1 soft ... 0 hard), by the nearest
    colour of `transforms.colorize` (the console convention: soft red ... hard blue)."""
    palette = T.colorize(_COLOUR_LEVELS).astype(np.float32) / 255.0  # (L, 3)
    flat = rgb.reshape(-1, 3).astype(np.float32)
    d = (flat**2).sum(1, keepdims=True) - 2 * flat @ palette.T + (palette**2).sum(1)[None]
    return _COLOUR_LEVELS[np.argmin(d, axis=1)].reshape(rgb.shape[:2])


def pair_arrays(manifest: Manifest, row: ManifestRow, size: int,
                where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One manifest row -> (input (2, S, S): B-mode, lesion mask; target (4, S, S); Tsukuba 0-5).

    The B-mode goes through the serving transforms (`dataset_to_input`: decode, region crop,
    resize, [-1, 1]; a PNG uses the non-dark box). The target is cropped at the same region when it
    has the B-mode frame's size, else taken as the region itself, and resized the same way; a colour
    target is E-mode RGB and its strain is read back through the colour map, a grey one is strain.
    """
    bmode_path = manifest.resolve(row)
    if not bmode_path.is_file():
        raise ManifestError(f"{where}: column 'path': {bmode_path} is not a file")
    target_text = row.labels.get(TARGET_COLUMN.removeprefix("label_"), "")
    if not target_text:
        raise ManifestError(f"{where}: column {TARGET_COLUMN!r} is empty; each row needs the strain "
                            "elastography image of the same view")
    target_path = Path(target_text) if Path(target_text).is_absolute() else manifest.root / target_text
    if not target_path.is_file():
        raise ManifestError(f"{where}: column {TARGET_COLUMN!r}: {target_path} is not a file")
    try:
        pixels, ds = _read_pixels(bmode_path)
        if ds is not None:
            x, region, grey = T.dataset_to_input(ds, size)
        else:
            grey = T.to_grey(pixels)
            region = T.fallback_region(grey)
            x = T.region_to_input(grey[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1], size)
        tpix, _ = _read_pixels(target_path)
    except (T.TransformError, OSError, ValueError) as exc:
        raise ManifestError(f"{where}: cannot read the pair: {exc}") from None
    if tpix.shape[:2] == grey.shape:
        tpix = tpix[region.y0 : region.y1 + 1, region.x0 : region.x1 + 1]
    top = 255.0 if tpix.dtype == np.uint8 else float(max(tpix.max(initial=1), 1))
    t = T.resize(tpix.astype(np.float32) / np.float32(top), size, size).clip(0, 1)
    if t.ndim == 3 and t.shape[-1] >= 3 and np.ptp(t[..., :3] - t[..., :1]) > 0.02:
        rgb = t[..., :3]
        mapped = strain_from_colour(rgb)
    else:
        mapped = t[..., 0] if t.ndim == 3 else t
        rgb = T.colorize(mapped).astype(np.float32) / 255.0
    y = T.to_unit(np.concatenate([rgb.transpose(2, 0, 1), mapped[None]], axis=0).clip(0, 1))
    mask = np.zeros((size, size), dtype=np.float32)
    box_text = row.labels.get(BOX_COLUMN.removeprefix("label_"), "")
    if box_text:
        try:
            bx0, by0, bx1, by1 = (float(v) for v in box_text.replace(",", " ").split())
        except ValueError:
            raise ManifestError(f"{where}: column {BOX_COLUMN!r}: {box_text!r} is not 'x0 y0 x1 y1'") from None
        sx, sy = size / region.cols, size / region.rows
        c0, c1 = int(np.floor((bx0 - region.x0) * sx)), int(np.ceil((bx1 - region.x0 + 1) * sx))
        r0, r1 = int(np.floor((by0 - region.y0) * sy)), int(np.ceil((by1 - region.y0 + 1) * sy))
        mask[max(r0, 0) : max(min(r1, size), 0), max(c0, 0) : max(min(c1, size), 0)] = 1.0
    score_text = row.labels.get(TSUKUBA_COLUMN.removeprefix("label_"), "")
    if score_text not in ("", "1", "2", "3", "4", "5"):
        raise ManifestError(f"{where}: column {TSUKUBA_COLUMN!r}: {score_text!r} is not 1-5 or empty")
    return np.concatenate([x, mask[None]]), y, int(score_text or 0)


def manifest_arrays(manifest_csv: Path, split: str, size: int) -> Arrays:
    """The rows of one split of a manifest of real pairs, through `pair_arrays`.

    Columns (see `MANIFEST_COLUMNS_HELP`): path (B-mode DICOM or PNG), patient_id, split,
    label_target_path (the strain elastography image of the same view, DICOM or PNG),
    label_tsukuba (optional, 1-5; empty = unknown) and label_box (optional, the lesion box
    "x0 y0 x1 y1" in B-mode frame pixels, inclusive; it drives the lesion-crop discriminator).
    Errors name the file and line of the row.
    """
    manifest = Manifest.read(manifest_csv)
    xs, ys, scores, patients = [], [], [], []
    for i, row in enumerate(manifest):
        if row.split != split:
            continue
        x, y, score = pair_arrays(manifest, row, size, where=f"{manifest_csv}:{i + 2}")
        xs.append(x)
        ys.append(y)
        scores.append(score)
        patients.append(row.patient_id)
    if not xs:
        raise ManifestError(f"{manifest_csv}: no rows in split {split!r}")
    return Arrays(np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32),
                  np.array(scores, dtype=np.int64), np.array([""] * len(xs)), np.array(patients))


def fit_manifest(request: Any) -> Any:
    """fit_gan on the manifest's train/val pairs; the Tsukuba head too when both splits have scores."""
    cfg = DemoConfig(seed=request.config.seed, batch_size=request.batch_size)
    torch.set_num_threads(cfg.torch_threads)
    manifest_csv = Path(request.manifest)
    train = manifest_arrays(manifest_csv, "train", cfg.input_size)
    val = manifest_arrays(manifest_csv, "val", cfg.input_size)
    out_dir = Path(request.out_dir)
    gen, result = train_generator(cfg, train, val, out_dir, gan=request.config, resume=request.resume)
    head = bool((train.tsukuba > 0).any() and (val.tsukuba > 0).any())
    if head:
        fit_tsukuba_head(gen, train, val, cfg, out_dir / "head")
    trained_on = (f"manifest {manifest_csv.name}: {len(train.x)} train, {len(val.x)} val pairs; "
                  f"Tsukuba head {'trained' if head else 'NOT trained (no scores)'}")
    gen.eval()
    save_state_and_metadata(gen, metadata_of(cfg, f"0.1.0-fit.manifest.seed{cfg.seed}", trained_on),
                            out_dir / f"{MODEL_ID}.pt")
    return result


# --- the harness CLI (`python -m train breast_elastography ...`) ----------------------------------


def task_fit(request: Any) -> Any:
    """FitRequest -> FitResult on a manifest of real pairs (`manifest_arrays`) or the phantom
    cohort; also writes `breast_elastography.pt`."""
    if request.manifest is not None:
        return fit_manifest(request)
    cfg = DemoConfig(seed=request.config.seed, batch_size=request.batch_size)
    torch.set_num_threads(cfg.torch_threads)
    data, idx = phantom_cohort(cfg)
    gen, result = train_generator(cfg, _subset(data, idx["train"]), _subset(data, idx["val"]),
                                  Path(request.out_dir), gan=request.config, resume=request.resume)
    fit_tsukuba_head(gen, _subset(data, idx["train"]), _subset(data, idx["val"]), cfg,
                     Path(request.out_dir) / "head")
    save_state_and_metadata(gen, metadata_of(cfg, f"0.1.0-fit.seed{cfg.seed}", "phantoms"),
                    Path(request.out_dir) / f"{MODEL_ID}.pt")
    return result


def _serving_checkpoint(path: Path) -> Path:
    if path.is_dir() or path.name in ("best.pt", "last.pt"):
        return (path if path.is_dir() else path.parent) / f"{MODEL_ID}.pt"
    return path


def task_evaluate(request: Any) -> Path:
    """EvaluateRequest -> report folder for a serving checkpoint on one split of a manifest of
    real pairs (`manifest_arrays`) or of the phantoms."""
    checkpoint = _serving_checkpoint(Path(request.checkpoint))
    model = build(checkpoint, {})
    if request.manifest is not None:
        size = int(model.metadata.get("input_size", DemoConfig.input_size))
        data = manifest_arrays(Path(request.manifest), request.split, size)
        evaluate_arrays(checkpoint, data, Path(request.out_dir), seed=request.seed,
                        title=f"Virtual elastography, manifest split {request.split}")
        return Path(request.out_dir)
    cfg = DemoConfig(seed=int(model.metadata.get("seed", DEMO_SEED)),
                     input_size=int(model.metadata.get("input_size", DemoConfig.input_size)))
    data, idx = phantom_cohort(cfg)
    evaluate_arrays(checkpoint, _subset(data, idx[request.split]), Path(request.out_dir), seed=request.seed,
                    title=f"Virtual elastography, phantom split {request.split}")
    return Path(request.out_dir)


def task_card(request: Any) -> Path:
    """CardRequest -> card folder (card.md + card.yaml) from an evaluation's metrics.json."""
    from train.common.cards import write_model_card

    checkpoint = _serving_checkpoint(Path(request.checkpoint))
    model = build(checkpoint, {})
    write_model_card(
        request.out_dir, model_id=MODEL_ID, version=model.card.version, name=NAME, intended_use=INTENDED_USE,
        inputs_and_routing="Breast B-mode US (not elastography, not Doppler); see models/elastography/card.md.",
        labels=LABELS, label_rule="Tsukuba elasticity score 1-5 (Itoh et al. 2006).",
        training_data=str(model.metadata.get("trained_on", "")),
        metrics=Path(request.evaluation_dir) / "metrics.json", not_for_clinical_use=True,
        weights_sha256=sha256_of(checkpoint), manufacturer=MANUFACTURER,
        reference=REFERENCE)
    return Path(request.out_dir)


def task_demo_weights(request: Any) -> Path:
    """DemoWeightsRequest -> the rebuilt demo weights (plus report and card)."""
    out = Path(request.out_path) if request.out_path is not None else DEMO_WEIGHTS
    summary = demo_weights(DemoConfig(seed=request.seed), out, Path(request.work_dir) / "evaluate",
                           card=out == DEMO_WEIGHTS)
    print(json.dumps(summary, indent=2, default=str))
    return out


def _register() -> None:
    from train.elastography.export import task_export
    from train.tasks import TASKS, TaskSpec, register_task

    spec = TaskSpec(
        name=MODEL_ID,
        summary="virtual breast strain elastography from B-mode (Transformer-UNet pix2pix GAN, Tsukuba head)",
        fit=task_fit, evaluate=task_evaluate, card=task_card, demo_weights=task_demo_weights, export=task_export,
        default_config=GanConfig(epochs=DemoConfig.epochs, lr=DemoConfig.lr, seed=DEMO_SEED, patience=0,
                                 max_steps_per_epoch=DemoConfig.max_steps_per_epoch),
    )
    register_task(spec)
    if "elastography" not in TASKS:  # the alias the command line uses
        TASKS["elastography"] = spec


_register()
