"""Shared pieces for synthetic images: shapes, deformation, ultrasound, MR and X-ray physics.

Every random function takes a `numpy.random.Generator` (make one with `rng(seed)`), so a
generator built from these pieces is reproducible from its seed; everything is vectorised
NumPy/SciPy (no per-pixel Python loops). Arrays are float64 (rows, columns) unless stated.
The per-task generators live with their model issues and build on this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float64]


def bool_array(a: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """`a` as a boolean mask."""
    return np.asarray(a, dtype=bool)


def rng(seed: int) -> np.random.Generator:
    """The generator every function here takes (PCG64 seeded with `seed`)."""
    return np.random.default_rng(seed)


def _grid(shape: tuple[int, int]) -> tuple[FloatArray, FloatArray]:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return rows.astype(np.float64), cols.astype(np.float64)


def _rotated(shape: tuple[int, int], center: tuple[float, float],
             angle_rad: float) -> tuple[FloatArray, FloatArray]:
    """Pixel coordinates in a frame centred on `center` (row, col) and rotated by `angle_rad`."""
    rows, cols = _grid(shape)
    dy, dx = rows - center[0], cols - center[1]
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return dx * c + dy * s, -dx * s + dy * c


# --- shapes ----------------------------------------------------------------------------------


def ellipse_mask(shape: tuple[int, int], center: tuple[float, float],
                 axes: tuple[float, float], angle_rad: float = 0.0) -> npt.NDArray[np.bool_]:
    """Pixels inside an ellipse with semi-axes `axes` = (along x, along y) in pixels."""
    u, v = _rotated(shape, center, angle_rad)
    return bool_array((u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0)


def ring_mask(shape: tuple[int, int], center: tuple[float, float], inner: float,
              outer: float) -> npt.NDArray[np.bool_]:
    """Pixels whose distance from `center` lies in [inner, outer]."""
    rows, cols = _grid(shape)
    r = np.hypot(rows - center[0], cols - center[1])
    return bool_array((r >= inner) & (r <= outer))


def random_blob(shape: tuple[int, int], generator: np.random.Generator, *,
                center: tuple[float, float] | None = None, radius: float | None = None,
                irregularity: float = 0.25, harmonics: int = 5) -> npt.NDArray[np.bool_]:
    """A smooth star-shaped blob: radius(theta) = r * (1 + sum of random low harmonics)."""
    h, w = shape
    if center is None:
        center = (generator.uniform(0.3, 0.7) * h, generator.uniform(0.3, 0.7) * w)
    if radius is None:
        radius = generator.uniform(0.1, 0.25) * min(h, w)
    rows, cols = _grid(shape)
    theta = np.arctan2(rows - center[0], cols - center[1])
    k = np.arange(1, harmonics + 1)
    amps = generator.normal(0.0, irregularity, harmonics) / k
    phases = generator.uniform(0, 2 * np.pi, harmonics)
    wobble = (amps[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None])).sum(0)
    boundary = radius * np.clip(1.0 + wobble, 0.3, None)
    return bool_array(np.hypot(rows - center[0], cols - center[1]) <= boundary)


def random_ellipse(shape: tuple[int, int], generator: np.random.Generator, *,
                   min_axis: float = 0.08, max_axis: float = 0.3) -> npt.NDArray[np.bool_]:
    """An ellipse at a random place, size (fractions of the short side) and angle."""
    h, w = shape
    side = min(h, w)
    center = (generator.uniform(0.25, 0.75) * h, generator.uniform(0.25, 0.75) * w)
    axes = (generator.uniform(min_axis, max_axis) * side, generator.uniform(min_axis, max_axis) * side)
    return ellipse_mask(shape, center, axes, generator.uniform(0, np.pi))


def smooth_field(shape: tuple[int, int], generator: np.random.Generator, *,
                 sigma_px: float) -> FloatArray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit SD."""
    field = ndimage.gaussian_filter(generator.standard_normal(shape), sigma_px, mode="reflect")
    sd = field.std()
    return (field - field.mean()) / (sd if sd > 0 else 1.0)


# --- elastic deformation ---------------------------------------------------------------------


def elastic_field(shape: tuple[int, int], generator: np.random.Generator, *, alpha_px: float,
                  sigma_px: float) -> FloatArray:
    """A smooth displacement field (2, rows, cols) with RMS displacement about `alpha_px`."""
    return np.stack([alpha_px * smooth_field(shape, generator, sigma_px=sigma_px)
                     for _ in range(2)])


def warp(image: npt.ArrayLike, field: FloatArray, *, order: Literal[0, 1, 2, 3, 4, 5] = 1) -> FloatArray:
    """Resample `image` at (row + field[0], col + field[1]); order 0 for label maps."""
    img = np.asarray(image, dtype=np.float64)
    rows, cols = _grid(img.shape[:2])
    coords = np.stack([rows + field[0], cols + field[1]])
    warped: FloatArray = ndimage.map_coordinates(img, coords.astype(np.float64), order=order, mode="reflect")
    return warped


def elastic_deform(image: npt.ArrayLike, generator: np.random.Generator, *,
                   alpha_px: float = 4.0, sigma_px: float = 8.0, order: Literal[0, 1, 2, 3, 4, 5] = 1) -> FloatArray:
    """Simard-style elastic deformation of one image (use `elastic_field` + `warp` to apply
    the same deformation to an image and its labels)."""
    img = np.asarray(image, dtype=np.float64)
    return warp(img, elastic_field(img.shape[:2], generator, alpha_px=alpha_px,
                                   sigma_px=sigma_px), order=order)


# --- ultrasound ------------------------------------------------------------------------------


def rayleigh_speckle(echogenicity: npt.ArrayLike, generator: np.random.Generator) -> FloatArray:
    """Fully developed speckle: envelope |A| with A complex Gaussian of power `echogenicity`,
    so the envelope is Rayleigh distributed with mean-square `echogenicity`."""
    power = np.clip(np.asarray(echogenicity, dtype=np.float64), 0, None)
    re, im = generator.standard_normal((2, *power.shape))
    return np.sqrt(power / 2) * np.hypot(re, im)


def nakagami_speckle(echogenicity: npt.ArrayLike, generator: np.random.Generator, *,
                     m: float = 1.0) -> FloatArray:
    """Nakagami-m envelope with spread `echogenicity` (m = 1 is Rayleigh; m < 1 pre-Rayleigh,
    few strong scatterers; m > 1 towards Rician, a coherent component)."""
    if m < 0.5:
        raise ValueError(f"Nakagami m must be >= 0.5, got {m}")
    omega = np.clip(np.asarray(echogenicity, dtype=np.float64), 0, None)
    return np.sqrt(generator.gamma(shape=m, scale=omega / m))


def psf_blur(image: npt.ArrayLike, *, axial_sigma_px: float, lateral_sigma_px: float) -> FloatArray:
    """A separable Gaussian point-spread function: axial along rows, lateral along columns."""
    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float64),
                                   (axial_sigma_px, lateral_sigma_px), mode="reflect")


def correlated_speckle(echogenicity: npt.ArrayLike, generator: np.random.Generator, *,
                       axial_sigma_px: float = 1.0, lateral_sigma_px: float = 2.0) -> FloatArray:
    """Speckle with realistic grain: complex scatterers blurred by the PSF, then the envelope
    (the result is still Rayleigh in a homogeneous region, with elongated lateral grains)."""
    power = np.clip(np.asarray(echogenicity, dtype=np.float64), 0, None)
    re, im = generator.standard_normal((2, *power.shape)) * np.sqrt(power / 2)
    sig = (axial_sigma_px, lateral_sigma_px)
    re = ndimage.gaussian_filter(re, sig, mode="reflect")
    im = ndimage.gaussian_filter(im, sig, mode="reflect")
    gain = 2 * np.sqrt(np.pi) * np.sqrt(axial_sigma_px * lateral_sigma_px) if all(sig) else 1.0
    return np.hypot(re, im) * gain  # gain keeps the mean level independent of the PSF size


def log_compress(envelope: npt.ArrayLike, *, dynamic_range_db: float = 60.0) -> FloatArray:
    """B-mode display: 20 log10 of the envelope over `dynamic_range_db` below its maximum,
    mapped to [0, 1]."""
    env = np.asarray(envelope, dtype=np.float64)
    peak = env.max()
    if peak <= 0:
        return np.zeros_like(env)
    db = 20 * np.log10(np.maximum(env / peak, 1e-12))
    return np.clip(1 + db / dynamic_range_db, 0, 1)


def sector_mask(shape: tuple[int, int], *, apex: tuple[float, float] | None = None,
                half_angle_rad: float = np.pi / 4, depth_px: float | None = None
                ) -> npt.NDArray[np.bool_]:
    """The fan of a phased/curved array: pixels within the half angle and depth from the apex."""
    h, w = shape
    apex = apex if apex is not None else (0.0, w / 2)
    rows, cols = _grid(shape)
    r = np.hypot(rows - apex[0], cols - apex[1])
    angle = np.arctan2(cols - apex[1], rows - apex[0])
    depth = depth_px if depth_px is not None else h - apex[0]
    return bool_array((np.abs(angle) <= half_angle_rad) & (r <= depth) & (rows >= apex[0]))


# --- MR --------------------------------------------------------------------------------------


def rician_noise(image: npt.ArrayLike, generator: np.random.Generator, *, sigma: float) -> FloatArray:
    """Magnitude of the image plus complex Gaussian noise of SD `sigma` per channel (Rician)."""
    img = np.asarray(image, dtype=np.float64)
    n_re, n_im = generator.normal(0.0, sigma, (2, *img.shape))
    return np.hypot(img + n_re, n_im)


def gaussian_noise(image: npt.ArrayLike, generator: np.random.Generator, *, sigma: float) -> FloatArray:
    """Image plus zero-mean Gaussian noise (phase-sensitive images such as PSIR are signed)."""
    img = np.asarray(image, dtype=np.float64)
    return img + generator.normal(0.0, sigma, img.shape)


def bias_field(shape: tuple[int, int], generator: np.random.Generator, *,
               strength: float = 0.3, order: int = 3) -> FloatArray:
    """A smooth multiplicative coil-sensitivity field: exp of a random polynomial of `order`
    in normalised coordinates, with values within about exp(+-strength)."""
    rows, cols = _grid(shape)
    y = 2 * rows / max(shape[0] - 1, 1) - 1
    x = 2 * cols / max(shape[1] - 1, 1) - 1
    log_field = np.zeros(shape)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            if i + j:
                log_field += generator.uniform(-1, 1) * x**i * y**j
    peak = np.abs(log_field).max()
    if peak > 0:
        log_field *= strength / peak
    return np.exp(log_field)


# --- X-ray -----------------------------------------------------------------------------------


def ellipsoid_path_length(shape: tuple[int, int], center: tuple[float, float],
                          axes: tuple[float, float], thickness: float,
                          angle_rad: float = 0.0) -> FloatArray:
    """Chord through an ellipsoid along the beam: thickness * sqrt(1 - (u/a)^2 - (v/b)^2)
    inside the projected ellipse with semi-axes `axes` (pixels), 0 outside."""
    u, v = _rotated(shape, center, angle_rad)
    q = 1.0 - (u / axes[0]) ** 2 - (v / axes[1]) ** 2
    return thickness * np.sqrt(np.clip(q, 0, None))


def rounded_rect_path_length(shape: tuple[int, int], center: tuple[float, float],
                             half_size: tuple[float, float], thickness: float, *,
                             angle_rad: float = 0.0, exponent: float = 6.0) -> FloatArray:
    """A rounded rectangle (a superellipse of `exponent`, 2 is an ellipse) with a domed
    profile: thickness * (1 - |u/a|^p - |v/b|^p)^(1/p). Good for phalanges and metacarpals."""
    u, v = _rotated(shape, center, angle_rad)
    q = 1.0 - np.abs(u / half_size[0]) ** exponent - np.abs(v / half_size[1]) ** exponent
    return thickness * np.clip(q, 0, None) ** (1.0 / exponent)


def beer_lambert(path_lengths: Sequence[FloatArray], mu: Sequence[float], *,
                 incident: float = 1.0) -> FloatArray:
    """Transmitted intensity I = I0 exp(-sum_i mu_i L_i) (mu per pixel of path length)."""
    if len(path_lengths) != len(mu):
        raise ValueError(f"{len(path_lengths)} path-length maps for {len(mu)} coefficients")
    line_integral = np.zeros_like(np.asarray(path_lengths[0], dtype=np.float64))
    for length, coefficient in zip(path_lengths, mu, strict=True):
        line_integral = line_integral + coefficient * np.asarray(length, dtype=np.float64)
    return incident * np.exp(-line_integral)


def quantum_noise(intensity: npt.ArrayLike, generator: np.random.Generator, *,
                  photons: float = 1e4) -> FloatArray:
    """Poisson counting noise for `photons` expected counts at intensity 1."""
    lam = np.clip(np.asarray(intensity, dtype=np.float64), 0, None) * photons
    return generator.poisson(lam).astype(np.float64) / photons


def radiograph_pixels(intensity: npt.ArrayLike, *, monochrome1: bool,
                      bits_stored: int = 12) -> npt.NDArray[np.uint16]:
    """Stored pixel values from transmitted intensity, as a For Presentation image.

    Log-transformed attenuation -ln(I) is scaled to [0, 2^bits - 1]. MONOCHROME2: more
    attenuation is brighter (bone white, as displayed). MONOCHROME1: the stored values are
    inverted (minimum value is white, PS3.3 C.7.6.3.1.2), which displays identically.
    """
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    att = -np.log(np.clip(np.asarray(intensity, dtype=np.float64), 1e-6, None))
    lo, hi = att.min(), att.max()
    norm = (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)
    top = 2**bits_stored - 1
    values = np.rint(norm * top).astype(np.uint16)
    return (top - values).astype(np.uint16) if monochrome1 else values


# --- output ----------------------------------------------------------------------------------


def to_uint(image: npt.ArrayLike, *, bits: int = 8, lo: float | None = None,
            hi: float | None = None) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Linearly map [lo, hi] (default: the image's range) to [0, 2^bits - 1], clipped."""
    img = np.asarray(image, dtype=np.float64)
    lo = float(img.min()) if lo is None else lo
    hi = float(img.max()) if hi is None else hi
    scale = (hi - lo) if hi > lo else 1.0
    top = 2**bits - 1
    values = np.rint(np.clip((img - lo) / scale, 0, 1) * top)
    return values.astype(np.uint8 if bits <= 8 else np.uint16)
