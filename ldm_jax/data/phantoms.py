"""Procedural mammogram phantoms with known anatomy, findings and labels (numpy only).

A phantom is a compressed breast described by tissue path lengths (mm) per pixel, projected
with the Beer-Lambert law ``N = N0 exp(-sum_i mu_i t_i)`` (Johns & Yaffe 1987 attenuation
coefficients at 20 keV), with quantum noise and detector blur, and stored as
a 12-bit "for presentation" image: log attenuation ``A = -ln(N / N0)``, dense tissue bright.

Anatomy (canonical left breast, chest wall at x = 0; right breasts are mirrored):
  * outline: a half-ellipse with a wavy border, truncated by the top edge in MLO views;
  * thickness: compressed plateau of ``thickness_mm`` with a semicircular uncompressed rim,
    wrapped in a skin shell of ``SKIN_MM``;
  * fibroglandular tissue: power-law noise ``P(f) ~ 1/f^beta`` (beta ~ 3, Burgess 2001)
    clipped to a per-pixel share of the path, plus Cooper's ligaments (arcs along the skin);
  * pectoral muscle (MLO), optional nipple;
  * findings: circumscribed or spiculated masses, microcalcification clusters.

The *counterfactual* is the same breast with every fibroglandular path replaced by fat,
skin, muscle, nipple and findings kept, rendered with the same quantum-noise realisation.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.fft
from scipy import ndimage

from ldm_jax import attributes
from ldm_jax.data.imageio import MAX_VALUE

# Linear attenuation coefficients at 20 keV, 1/mm (Johns & Yaffe 1987, Phys Med Biol 32:675;
# hydroxyapatite of the order of 2/mm).
MU_PER_MM = {
    "fat": 0.0456,
    "gland": 0.0802,
    "skin": 0.0802,
    "muscle": 0.085,
    "mass": 0.0844,  # infiltrating ductal carcinoma
    "calcification": 2.0,
}
SKIN_MM = 1.5
A_MAX = 5.0  # log attenuation stored as 4095
GAMMA = 1.6  # presentation look-up table: value = 4095 (A / A_MAX)^GAMMA
FIELD_OF_VIEW_MM = 200.0  # default: pixel_size_mm = FIELD_OF_VIEW_MM / size
DETECTOR_PSF_MM = 0.1  # Gaussian sigma of the detector point spread function
QUANTA_PER_MM2 = 5e5  # unattenuated quanta per mm^2 reaching the detector
DENSITY_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # BI-RADS A-D by glandular fraction
_LUT_STEPS = 1 << 16  # log-attenuation steps of the presentation look-up table
_BIN_MARGIN = 0.04  # targets stay this far inside a density bin


@dataclasses.dataclass(frozen=True)
class Phantom:
    """One phantom: 12-bit image, its fat-only counterfactual, lesion/breast masks and labels."""

    image: np.ndarray  # uint16 [H, W], 0..4095
    counterfactual: np.ndarray  # uint16 [H, W], glandular tissue -> fat, findings kept
    mask: np.ndarray  # bool [H, W], lesion (all False without finding)
    breast_mask: np.ndarray  # bool [H, W]
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive; (0, 0, 0, 0) if none
    density: int  # 0..3 = A..D
    finding: int  # 0 none, 1 mass, 2 calcification
    view: int  # 0 CC, 1 MLO
    laterality: int  # 0 L, 1 R
    glandular_fraction: float
    pixel_size_mm: float

    @property
    def labels(self) -> np.ndarray:
        """int32 [4] in the order of ``ldm_jax.attributes.ATTRIBUTE_NAMES``."""
        return np.array([self.density, self.finding, self.view, self.laterality], np.int32)


def attenuation(pixels: np.ndarray) -> np.ndarray:
    """Log attenuation ``A = sum_i mu_i t_i`` (float64) from stored 12-bit values."""
    return A_MAX * (np.asarray(pixels, np.float64) / MAX_VALUE) ** (1.0 / GAMMA)


def density_class(glandular_fraction: float) -> int:
    """BI-RADS class index (0..3 = A..D) of a glandular fraction in [0, 1]."""
    if not 0.0 <= glandular_fraction <= 1.0:
        raise ValueError(f"glandular_fraction {glandular_fraction} out of range [0, 1]")
    return int(min(np.searchsorted(DENSITY_BINS, glandular_fraction, side="right") - 1, 3))


def power_law_noise(rng: np.random.Generator, size: int, beta: float, stretch: float = 1.0) -> np.ndarray:
    """Two independent zero-mean, unit-variance Gaussian fields ``[2, size, size]`` (float32)
    with power spectrum ``1/f^beta``.

    Random-phase Fourier synthesis: amplitude ``|f'|^(-beta/2)`` (DC set to zero) with uniform
    random phases, ``f' = (f_y, f_x * stretch)``: structures ``stretch`` times longer along x; the
    radially averaged spectrum stays ``~ 1/f^beta``. Real and imaginary parts of the inverse FFT
    are the two (uncorrelated, by the central limit theorem Gaussian) fields.
    """
    amplitude, scale = _amplitude(size, beta, stretch)
    angle = np.float32(2 * np.pi) * rng.random((size, size), dtype=np.float32)
    spectrum = np.empty((size, size), np.complex64)
    spectrum.real, spectrum.imag = amplitude * np.cos(angle), amplitude * np.sin(angle)
    field = scipy.fft.ifft2(spectrum, overwrite_x=True)
    return np.stack([field.real, field.imag]) * scale


@functools.lru_cache(maxsize=1)
def _presentation_lut():
    """uint16 table ``round(4095 t^GAMMA)`` for ``t = i / _LUT_STEPS``."""
    return np.round(np.linspace(0.0, 1.0, _LUT_STEPS + 1) ** GAMMA * MAX_VALUE).astype(np.uint16)


@functools.lru_cache(maxsize=64)
def _amplitude(size, beta, stretch):
    """Fourier amplitude ``|f'|^(-beta/2)`` and the factor giving each inverse-FFT part unit variance.

    With random phases, Re and Im of ``ifft2`` each have variance ``sum |amplitude|^2 / (2 N^4)``.
    """
    freq = np.fft.fftfreq(size)
    f2 = freq[:, None] ** 2 + stretch**2 * freq[None, :] ** 2
    f2[0, 0] = np.inf
    amplitude = f2 ** (-beta / 4)
    scale = size**2 / np.sqrt(0.5 * (amplitude**2).sum())
    return amplitude.astype(np.float32), np.float32(scale)


def _check(name, value, low, high):
    if value is None or not low <= value <= high:
        raise ValueError(f"{name} {value} out of range [{low}, {high}]")


def _attribute(rng_value: int, attribute: str, given) -> int:
    return rng_value if given is None else attributes.encode_value(attribute, given)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _chord(radius, rho):
    """Path length through a sphere (or cylinder) of ``radius`` at distance ``rho`` from its axis."""
    return 2.0 * np.sqrt(np.maximum(radius**2 - rho**2, 0.0))


def _solve_offset(base, weight, target):
    """Offset ``a`` with ``F(a) = sum(weight * clip(a + base, 0, 1)) = target``.

    F is monotone and piecewise linear: bisection to a narrow bracket, then linear interpolation.
    """
    low, high = -1.0 - float(base.max()), 1.0 - float(base.min())
    f_low, f_high = 0.0, float(weight.sum())
    for _ in range(12):
        mid = 0.5 * (low + high)
        f_mid = float(np.dot(weight, np.clip(mid + base, 0.0, 1.0)))
        if f_mid < target:
            low, f_low = mid, f_mid
        else:
            high, f_high = mid, f_mid
    return low + (high - low) * (target - f_low) / max(f_high - f_low, 1e-12)


def _window(coords, cx, cy, half):
    """Row and column slices of the pixels within ``half`` mm of ``(cx, cy)`` (pixel centres in mm)."""
    cols = np.flatnonzero(np.abs(coords - cx) <= half)
    rows = np.flatnonzero(np.abs(coords - cy) <= half)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _mass(rng, x, y, cx, cy, radius, spiculated, pixel):
    """Projected mass thickness (mm): a lobulated sphere, plus spicules if ``spiculated``."""
    dx, dy = x - cx, y - cy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    k = rng.integers(3, 7)
    lobulation = 1.0 + rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    t = _chord(radius * lobulation, rho)
    if spiculated:
        t *= 0.8  # core of a spiculated mass is less dense than a solid nodule
        for angle in rng.uniform(0, 2 * np.pi, rng.integers(10, 20)):
            length = radius * rng.uniform(1.6, 2.8)
            width = max(rng.uniform(0.3, 0.7), 0.5 * pixel)
            along = dx * np.cos(angle) + dy * np.sin(angle)
            across = -dx * np.sin(angle) + dy * np.cos(angle)
            taper = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
            t = np.maximum(t, taper * _chord(width * (0.3 + taper), across) * 4.0)
    return t


def _calcifications(rng, x, y, cx, cy, pixel):
    """Projected thickness (mm) of 4-10 hydroxyapatite spheres of 0.1-1 mm in a 5-10 mm cluster.

    Each sphere of diameter d keeps its volume ``pi d^3 / 6``, spread as a Gaussian whose
    variance is the sphere's projected second moment ``d^2 / 20`` plus the pixel aperture
    ``p^2 / 12``; truncated at 3 sigma.
    """
    t = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    cluster = rng.uniform(5.0, 10.0)
    for _ in range(rng.integers(4, 11)):
        r, phi = 0.5 * cluster * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        d = rng.uniform(0.1, 1.0)
        var = d**2 / 20 + pixel**2 / 12
        rho2 = (x - cx - r * np.cos(phi)) ** 2 + (y - cy - r * np.sin(phi)) ** 2
        speck = np.pi * d**3 / 6 / (2 * np.pi * var) * np.exp(-rho2 / (2 * var))
        t += np.where(rho2 <= 9 * var, speck, 0.0)
    return t


def generate_phantom(
    seed: int,
    size: int = 128,
    *,
    density=None,
    finding=None,
    view=None,
    laterality=None,
    beta: float = 3.0,
    pixel_size_mm: float | None = None,
    nipple: bool | None = None,
    mass_radius_mm: float | None = None,
    quanta_per_mm2: float = QUANTA_PER_MM2,
) -> Phantom:
    """A phantom ``size x size``; attributes left ``None`` are drawn from ``seed``.

    Attributes accept indices or names (``density="C"``). The seed drives four independent
    streams (attributes, anatomy, finding, quantum noise), so the same seed with a different
    finding gives the same breast and noise, differing only by the lesion.
    """
    _check("size", size, 64, 1024)
    _check("beta", beta, 1.0, 5.0)
    pixel = FIELD_OF_VIEW_MM / size if pixel_size_mm is None else pixel_size_mm
    _check("pixel_size_mm", pixel, 0.025, 4.0)
    if mass_radius_mm is not None:
        _check("mass_radius_mm", mass_radius_mm, 2.0, 30.0)
    _check("quanta_per_mm2", quanta_per_mm2, 1e2, np.inf)
    attr_rng, anat, find, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    # Attributes: always drawn, so a given one does not shift the others.
    drawn = [int(attr_rng.integers(n)) for n in attributes.NUM_CLASSES]
    density, finding, view, laterality = (
        _attribute(v, a, g) for v, a, g in zip(drawn, attributes.ATTRIBUTE_NAMES, (density, finding, view, laterality))
    )
    low, high = DENSITY_BINS[density] + _BIN_MARGIN, DENSITY_BINS[density + 1] - _BIN_MARGIN
    target = low + (high - low) * attr_rng.uniform()
    has_nipple = attr_rng.uniform() < 0.7 if nipple is None else bool(nipple)

    # Geometry in mm, canonical left breast (chest wall at x = 0).
    fov = size * pixel
    coords = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(pixel)
    x, y = coords[None, :], coords[:, None]  # broadcast to [size, size]
    depth = anat.uniform(100.0, 150.0) * (1.1 if view else 1.0)
    if view == 0:  # CC: half-ellipse centred on the chest wall
        cy = 0.5 * fov + anat.normal(0.0, 5.0)
        half_top, half_bottom = anat.uniform(65.0, 90.0), anat.uniform(65.0, 90.0)
    else:  # MLO: breast runs into the axilla at the top edge
        cy = 0.5 * fov + anat.uniform(5.0, 20.0)
        top_fraction = anat.uniform(0.35, 0.5)  # breast width at the top edge / depth
        half_top, half_bottom = cy / (1 - top_fraction**2) ** 0.5, anat.uniform(60.0, 80.0)
    half = np.where(y < cy, np.float32(half_top), np.float32(half_bottom))
    u, v = x / depth, (y - cy) / half
    r = np.maximum(np.hypot(u, v), 1e-6)
    # Wavy border: r / (1 + Re sum_k c_k e^{ik theta}), k = 2, 3, 5 (angle-addition recurrences).
    coeffs = [complex(anat.uniform(0, 0.02) * np.exp(1j * anat.uniform(0, 2 * np.pi))) for _ in range(3)]
    c1, s1 = u / r, v / r
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c5, s5 = c3 * c2 - s3 * s2, s3 * c2 + c3 * s2
    wave = 1.0 + sum(k.real * c - k.imag * s for k, c, s in zip(coeffs, (c2, c3, c5), (s2, s3, s5)))
    # Distance to the skin (mm) to first order: (1 - r) / |grad r|.
    grad = np.hypot(u / depth, v / half) / (r * wave)
    r = r / wave
    zeta = np.maximum(1.0 - r, 0.0) / np.maximum(grad, 1e-9)

    # Path lengths: semicircular rim of radius H/2, skin shell of SKIN_MM.
    thickness = anat.uniform(40.0, 65.0)
    rim = 0.5 * thickness
    inside = np.minimum(zeta, rim)
    total = np.where(r < 1.0, _chord(rim, rim - inside), 0.0)
    interior = np.where(r < 1.0, _chord(rim - SKIN_MM, rim - inside), 0.0)
    skin = total - interior

    if has_nipple:
        nipple_r = anat.uniform(4.0, 7.0)
        nx = depth * (1.0 + sum(coeffs).real)  # tip of the outline, theta = 0
        skin = skin + _chord(nipple_r, np.hypot(x - nx, y - cy)) * 0.8

    muscle = np.zeros((size, size), np.float32)
    if view == 1:
        width, height = top_fraction * depth * anat.uniform(0.55, 0.85), anat.uniform(70.0, 120.0)
        edge = width * np.clip(1.0 - y / height, 0.0, 1.0) ** anat.uniform(0.7, 1.3)
        # smooth step over 1.5 mm at the edge, thickening towards the axilla
        muscle = np.clip((edge - x) / 1.5 + 0.5, 0.0, 1.0) * (0.6 + 0.4 * np.clip((edge - x) / width, 0.0, 1.0))

    # Fibroglandular share of the interior path: clipped power-law texture, pushed towards fat
    # under the skin (subcutaneous fat) and at the chest wall (retromammary fat).
    texture, warp = power_law_noise(anat, size, beta, float(anat.choice([1.5, 2.0, 2.5])))  # ducts run to the nipple
    bias = (
        -2.0 * np.exp(-zeta / anat.uniform(5.0, 10.0))
        - 1.0 * np.exp(-x / anat.uniform(6.0, 12.0))
        + 0.4 * (1.0 - np.minimum(r, 1.0) ** 2)
    )
    base = anat.uniform(0.3, 0.45) * texture + bias
    # Cooper's ligaments: thin fibrous arcs along the skin, level sets of zeta + warped noise.
    spacing, sway = anat.uniform(6.0, 12.0), anat.uniform(3.0, 6.0)
    level = (zeta + sway * warp) / spacing
    width = max(0.4, 0.6 * pixel) / spacing
    ligament = 0.25 * np.exp(-(((level - np.round(level)) / width) ** 2)) * (zeta < 3.0 * spacing)

    # Solve the offset so that the glandular fraction over the fully compressed region
    # (excluding rim, muscle) hits the target: mean(g (1 - lig) + lig) = target.
    region = (zeta >= rim) & (muscle < 0.5)
    keep = 1.0 - ligament[region]
    offset = _solve_offset(base[region], keep, (target - ligament[region].mean()) * region.sum())
    gland = np.clip(offset + base, 0.0, 1.0)
    share = gland * (1.0 - ligament) + ligament
    glandular_fraction = float(share[region].mean())

    # Findings, placed within the fully compressed breast (outside the muscle).
    lesion = np.zeros((size, size), np.float32)
    calc = np.zeros((size, size), np.float32)
    if finding:
        radius = (mass_radius_mm or find.uniform(5.0, 15.0)) if finding == 1 else 6.0
        margin = radius
        allowed = np.flatnonzero((zeta >= rim + margin) & (muscle == 0.0) & (x > margin))
        if allowed.size == 0:
            allowed = np.flatnonzero(region)
        at = find.choice(allowed)
        cy_l, cx = coords[at // size], coords[at % size]
        if finding == 1:
            w = rows, cols = _window(coords, cx, cy_l, 3.0 * radius + pixel)
            spiculated = find.uniform() < 0.5
            lesion[w] = np.minimum(_mass(find, x[:, cols], y[rows], cx, cy_l, radius, spiculated, pixel), interior[w])
            mask = lesion > 0
        else:
            w = rows, cols = _window(coords, cx, cy_l, 6.0 + pixel)
            calc[w] = _calcifications(find, x[:, cols], y[rows], cx, cy_l, pixel)
            mask = calc > 0
    else:
        mask = np.zeros((size, size), bool)

    # Tissue paths (mm): the mass displaces tissue in proportion; muscle displaces breast tissue.
    breast_path = interior * (1.0 - muscle) - lesion
    glandular = share * breast_path
    mu = MU_PER_MM
    common = mu["skin"] * skin + mu["muscle"] * muscle * interior + mu["mass"] * lesion + mu["calcification"] * calc
    a_image = common + mu["fat"] * (breast_path - glandular) + mu["gland"] * glandular
    a_counter = common + mu["fat"] * breast_path

    # Detector: N = N0 exp(-A) quanta with Poisson noise of variance N; in the log image that is
    # A + z / sqrt(N) = A + z exp(A / 2) / sqrt(N0) to first order. Then the detector PSF.
    z = noise_rng.standard_normal((size, size), dtype=np.float32) / np.float32(np.sqrt(quanta_per_mm2) * pixel)
    sigma = DETECTOR_PSF_MM / pixel
    lut = _presentation_lut()

    def detect(a):
        a = a + np.exp(0.5 * a) * z
        if sigma >= 0.125:  # below, the 4-sigma kernel is a single pixel: an identity
            a = ndimage.gaussian_filter(a, sigma)
        return lut[(np.clip(a, 0.0, A_MAX) * (_LUT_STEPS / A_MAX) + 0.5).astype(np.int32)]

    image, counterfactual = detect(a_image), detect(a_counter)
    breast = total + skin > 0
    if laterality == 1:
        image, counterfactual, mask, breast = (
            np.ascontiguousarray(m[:, ::-1]) for m in (image, counterfactual, mask, breast)
        )
    return Phantom(
        image=image,
        counterfactual=counterfactual,
        mask=mask,
        breast_mask=breast,
        box=_box(mask),
        density=density_class(glandular_fraction),
        finding=finding,
        view=view,
        laterality=laterality,
        glandular_fraction=glandular_fraction,
        pixel_size_mm=float(pixel),
    )
