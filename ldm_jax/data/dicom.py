"""DICOM mammograms -> normalised square 16-bit images; nothing identifying is kept.

The steps, in order: decode the pixel data (pylibjpeg plugins handle JPEG 2000 and
JPEG-LS), modality LUT (rescale slope/intercept), VOI LUT or window (the first one
given; the image's own range when neither is), MONOCHROME1 inversion, orientation (the
chest wall is put on the left, whichever breast it is), crop to the breast's bounding
box, pad to a square, resize, and quantise to ``MAX_VALUE`` (12-bit values in uint16,
the range of the procedural phantoms).

Only pixel data, the view/laterality tags and a salted hash of the PatientID leave this
module; no other tag is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import warnings

import numpy as np

from ldm_jax.data.imageio import MAX_VALUE


class DicomError(ValueError):
    """A file that cannot be used; ``reason`` is short and carries no patient data."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Mammogram:
    """A processed mammogram: ``image`` uint16 ``[S, S]`` in ``0..MAX_VALUE``, chest wall left.

    ``laterality`` ("L"/"R") and ``view`` ("CC"/"MLO") come from the DICOM tags (None when
    absent or another value); ``flipped`` says whether the image was mirrored;
    ``patient_hash`` is the salted hash of the PatientID (None without salt or PatientID).
    """

    image: np.ndarray
    laterality: str | None
    view: str | None
    flipped: bool
    patient_hash: str | None = None


@contextlib.contextmanager
def _quiet():
    """Silence pydicom's warnings and log: they quote element values (names, dates...)."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def read_dicom(path: str | os.PathLike, header_only: bool = False):
    """The pydicom ``Dataset`` of ``path`` (without pixel data when ``header_only``).

    Raises ``DicomError`` when it is not a readable DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise DicomError("not a DICOM file (no DICM preamble)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise DicomError(f"unreadable DICOM header ({type(e).__name__})") from None


def _check_image(ds) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomError("no pixel data (not an image DICOM)")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(
            f"unsupported photometric interpretation {photometric or 'missing'!r} (expected grayscale MONOCHROME1/2)"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomError(f"multi-frame image ({ds.NumberOfFrames} frames) not supported")


def _decode(ds) -> np.ndarray:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DicomError(f"unsupported transfer syntax {syntax.name}") from None
        if not decoder.is_available:
            raise DicomError(
                f"no decoder installed for transfer syntax {syntax.name} "
                "(install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg)"
            )
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad pixel data
        raise DicomError(f"corrupt or truncated pixel data ({type(e).__name__})") from None
    if pixels.ndim != 2:
        raise DicomError(f"expected a 2-D grayscale image, got pixel shape {pixels.shape}")
    return pixels


def display_pixels(ds) -> np.ndarray:
    """Float32 ``[H, W]`` in [0, 1], 1 = bright (dense), from a mammogram ``Dataset``.

    Applies the modality LUT, then the VOI LUT (preferred) or the first window; without
    either the image's own min..max is used. MONOCHROME1 images are inverted.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _check_image(ds)
    pixels = apply_modality_lut(_decode(ds), ds)
    if pixels.dtype.kind == "f" and np.array_equal(pixels, np.round(pixels)):
        pixels = pixels.astype(np.int64)  # a VOI LUT is indexed by integer values
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        # the VOI output range is the transform's value at extreme inputs (it clips them)
        probe = np.array([-(2**31), 2**31 - 1], dtype=pixels.dtype if pixels.dtype.kind == "f" else np.int64)
        try:
            low, high = sorted(apply_voi_lut(probe, ds, prefer_lut=True).astype(np.float64))
            pixels = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise DicomError(f"invalid VOI LUT or window ({type(e).__name__})") from None
    else:
        pixels = pixels.astype(np.float64)
        low, high = float(pixels.min()), float(pixels.max())
    if not np.isfinite([low, high]).all() or high <= low:
        raise DicomError("image has no contrast (constant pixel values)")
    image = np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image


def laterality_tag(ds) -> str | None:
    """ "L"/"R" from ImageLaterality, else Laterality; None when absent or unknown."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def view_tag(ds) -> str | None:
    """ "CC"/"MLO" from ViewPosition; None for other views (ML, LM, XCCL...) or when absent."""
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    return value if value in ("CC", "MLO") else None


def patient_hash(ds, salt: bytes) -> str | None:
    """Salted hash of the PatientID (None when absent); the ID itself never leaves here."""
    value = str(ds.get("PatientID", "") or "").strip()
    return salted_hash(salt, value) if value else None


def header_patient_hash(path: str | os.PathLike, salt: bytes) -> str | None:
    """Salted PatientID hash read from the header only (pixel data is not loaded)."""
    with _quiet():
        return patient_hash(read_dicom(path, header_only=True), salt)


def salted_hash(salt: bytes, value: str) -> str:
    """Keyed hash (HMAC-SHA256, 32 hex digits) of ``value``: stable per salt, not reversible."""
    if not salt:
        raise ValueError("the salt must not be empty")
    return hmac.new(salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def foreground_threshold(image: np.ndarray, fraction: float = 0.03) -> float:
    """Background level plus ``fraction`` of the dynamic range (1st..99th percentile)."""
    low, high = np.percentile(image, [1.0, 99.0])
    return float(low + fraction * (high - low))


def _largest_run(occupancy: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the contiguous run of occupied entries with the largest total."""
    on = occupancy > 0
    best, best_mass, start = None, -1.0, None
    for i, flag in enumerate(np.append(on, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            mass = float(occupancy[start:i].sum())
            if mass > best_mass:
                best, best_mass = (start, i), mass
            start = None
    if best is None:
        raise DicomError("no breast tissue found (blank image)")
    return best


def breast_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (exclusive ends) of the breast in a [0, 1] image.

    Foreground is above ``foreground_threshold``, less isolated speckle (pixels with fewer
    than two foreground 4-neighbours); the breast is the heaviest contiguous band of
    columns, then of rows within it, so separate markers and labels are left out.
    """
    mask = image > foreground_threshold(image)
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1].astype(np.int8) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    mask &= neighbours >= 2
    left, right = _largest_run(mask.mean(axis=0))
    top, bottom = _largest_run(mask[:, left:right].mean(axis=1))
    return top, bottom, left, right


def chest_wall_right(image: np.ndarray) -> bool:
    """Whether the chest wall (the side where the breast touches the border) is on the right."""
    edge = max(1, image.shape[1] // 10)
    return float(image[:, -edge:].mean()) > float(image[:, :edge].mean())


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Float32 ``[size, size]``: pad to a square with 0 (right and evenly top/bottom), then resize."""
    from PIL import Image

    h, w = image.shape
    side = max(h, w)
    top = (side - h) // 2
    square = np.zeros((side, side), np.float32)
    square[top : top + h, :w] = image
    resample = Image.Resampling.BILINEAR  # Pillow's resize is antialiased when shrinking
    resized = Image.fromarray(square, mode="F").resize((size, size), resample=resample)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def preprocess(image: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """Orient (chest wall left), crop to the breast, pad square, resize, quantise.

    ``image`` is float ``[H, W]`` in [0, 1]; returns (uint16 ``[size, size]`` in
    ``0..MAX_VALUE``, flipped).
    """
    flipped = chest_wall_right(image)
    if flipped:
        image = image[:, ::-1]
    top, bottom, left, right = breast_box(image)
    out = square_resize(np.ascontiguousarray(image[top:bottom, left:right]), size)
    return np.round(out * MAX_VALUE).astype(np.uint16), flipped


def load_mammogram(path: str | os.PathLike, size: int, salt: bytes | None = None) -> Mammogram:
    """Read and preprocess one DICOM mammogram; ``DicomError`` (with a reason) when unusable.

    With ``salt`` the result carries the salted hash of the PatientID. pydicom's warnings
    are silenced here, as they can quote identifying element values.
    """
    if size < 8:
        raise ValueError(f"output size must be >= 8 pixels, got {size}")
    with _quiet():
        ds = read_dicom(path)
        image, flipped = preprocess(display_pixels(ds), size)
        return Mammogram(
            image=image,
            laterality=laterality_tag(ds),
            view=view_tag(ds),
            flipped=flipped,
            patient_hash=patient_hash(ds, salt) if salt else None,
        )
