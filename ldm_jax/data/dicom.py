"""DICOM mammograms -> normalised square 16-bit images; nothing identifying is kept.

The steps, in order: check the header (a mammogram: Modality MG when present, grayscale,
not one-bit, one frame or the chosen one, a size between ``MIN_SIDE`` and ``max_pixels``),
decode the pixel data (pylibjpeg plugins handle JPEG 2000 and JPEG-LS), modality LUT
(rescale slope/intercept), VOI LUT or window (the first one given; the image's own range
when neither is), MONOCHROME1 inversion, breast segmentation (``segment``), orientation
(the chest wall is put on the left, whichever breast it is), background outside the breast,
crop to the breast, pad to a square, resize, and quantise to ``MAX_VALUE`` (12-bit values in
uint16, the range of the procedural phantoms).

Only pixel data, the view/laterality tags and a salted hash of the PatientID leave this
module. A file that cannot be used raises ``DicomError`` whose reason is one of ``REASONS``:
a fixed vocabulary, never text taken from the file.
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

from ldm_jax.data import segment
from ldm_jax.data.imageio import MAX_VALUE

MIN_SIDE = 64  # pixels: smaller images are icons or thumbnails, not mammograms
MAX_PIXELS = 100_000_000  # default limit of Rows x Columns (FFDM is ~4000 x 5000 = 2e7)

REASONS = {
    "not_dicom": "not a DICOM file (no DICM preamble)",
    "bad_header": "unreadable or invalid DICOM header",
    "no_pixels": "no pixel data (not an image DICOM)",
    "truncated": "pixel data missing, truncated or corrupt",
    "not_mg": "not a mammogram (Modality is not MG)",
    "colour": "not a grayscale image (PhotometricInterpretation is not MONOCHROME1/2)",
    "one_bit": "one-bit image (a mask or overlay, not a mammogram)",
    "multi_frame": "more than one frame (choose one with --frame)",
    "no_frame": "the chosen frame is not in the image",
    "too_small": f"image smaller than {MIN_SIDE} pixels a side",
    "too_large": "declared image size above --max-pixels (not decoded)",
    "bad_size": "invalid image size, bit depth or frame count in the header",
    "syntax": "unsupported transfer syntax (not an image compression)",
    "no_decoder": "no decoder installed for the transfer syntax (install pylibjpeg, "
    "pylibjpeg-openjpeg, pylibjpeg-libjpeg)",
    "voi": "invalid VOI LUT or window",
    "no_contrast": "image has no contrast (constant pixel values)",
    "no_breast": "no breast found (blank image, or nothing touches the left or right border)",
    "no_patient": "no patient id (no CSV patient column and no DICOM PatientID)",
    "unexpected": "unexpected error while processing",
}


class DicomError(ValueError):
    """A file that cannot be used; ``reason`` is ``REASONS[key]``: fixed text, no patient data."""

    def __init__(self, key: str):
        self.key, self.reason = key, REASONS[key]
        super().__init__(self.reason)


@dataclasses.dataclass(frozen=True)
class Mammogram:
    """A processed mammogram: ``image`` uint16 ``[S, S]`` in ``0..MAX_VALUE``, chest wall left.

    ``laterality`` ("L"/"R") and ``view`` ("CC"/"MLO") come from the DICOM tags (None when
    absent or another value); ``flipped`` says whether the image was mirrored;
    ``breast_fraction`` is the share of the input image's pixels inside the breast mask;
    ``patient_hash`` is the salted hash of the PatientID (None without salt or PatientID).
    """

    image: np.ndarray
    laterality: str | None
    view: str | None
    flipped: bool
    breast_fraction: float
    patient_hash: str | None = None


@contextlib.contextmanager
def _quiet():
    """Silence pydicom's warnings and log: they quote element values (names, dates...), and its
    decoders log tracebacks. The level is set on the "pydicom" logger, so that its child loggers
    (``pydicom.pixels...``, which inherit it) are silenced too, also those made later."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_dicom(path: str | os.PathLike, header_only: bool = False):
    """The pydicom ``Dataset`` of ``path`` (without pixel data when ``header_only``).

    Raises ``DicomError`` when it is not a readable DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise DicomError("not_dicom") from None
    except Exception:  # pydicom raises many types on malformed headers
        raise DicomError("bad_header") from None


def _int(ds, keyword: str, default: int) -> int:
    """An integer header value (``default`` when absent or empty); ``bad_size`` when not an integer."""
    try:
        value = ds.get(keyword, None)
        return default if value is None or value == "" else int(value)
    except Exception:  # a malformed value raises on access or conversion
        raise DicomError("bad_size") from None


def _text(ds, keyword: str) -> str:
    """A header string, stripped and upper-case ("" when absent or unreadable)."""
    try:
        return str(ds.get(keyword, "") or "").strip().upper()
    except Exception:
        return ""


def check_header(ds, frame: int | None = None, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse what is not a single grayscale mammogram, before any pixel is decoded.

    ``frame`` picks a frame of a multi-frame image; ``max_pixels`` bounds Rows x Columns so a
    crafted header cannot make the decoder allocate gigabytes.
    """
    if "Rows" not in ds and "Columns" not in ds:
        raise DicomError("no_pixels")
    modality = _text(ds, "Modality")
    if modality and modality != "MG":
        raise DicomError("not_mg")
    if _text(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError("colour")
    if _int(ds, "SamplesPerPixel", 1) != 1:
        raise DicomError("colour")
    bits = _int(ds, "BitsAllocated", 0)
    if bits == 1 or _int(ds, "BitsStored", bits) == 1:
        raise DicomError("one_bit")
    rows, columns, frames = _int(ds, "Rows", 0), _int(ds, "Columns", 0), _int(ds, "NumberOfFrames", 1)
    if min(rows, columns, frames) < 1 or bits not in (8, 16, 32):
        raise DicomError("bad_size")
    if rows * columns > max_pixels:
        raise DicomError("too_large")
    if min(rows, columns) < MIN_SIDE:
        raise DicomError("too_small")
    if frame is None and frames > 1:
        raise DicomError("multi_frame")
    if frame is not None and not 0 <= frame < frames:
        raise DicomError("no_frame")


def _decode(ds, frame: int | None) -> np.ndarray:
    """The stored pixels ``[H, W]`` of the (chosen) frame."""
    from pydicom.pixels import get_decoder, pixel_array

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError("truncated")  # the header describes an image, the file ends before it
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DicomError("syntax") from None
        if not decoder.is_available:
            raise DicomError("no_decoder")
    try:
        pixels = pixel_array(ds, index=frame)
    except Exception:  # pydicom raises many types for bad pixel data
        raise DicomError("truncated") from None
    if pixels.ndim != 2:
        raise DicomError("colour")
    return pixels


def display_pixels(ds, frame: int | None = None) -> np.ndarray:
    """Float32 ``[H, W]`` in [0, 1], 1 = bright (dense), from a mammogram ``Dataset``.

    Applies the modality LUT, then the VOI LUT (preferred) or the first window; without
    either the image's own min..max is used. MONOCHROME1 images are inverted.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = _decode(ds, frame)
    try:
        pixels = apply_modality_lut(pixels, ds)
    except Exception:
        raise DicomError("bad_header") from None
    if pixels.dtype.kind == "f" and np.array_equal(pixels, np.round(pixels)):
        pixels = pixels.astype(np.int64)  # a VOI LUT is indexed by integer values
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        # the VOI output range is the transform's value at extreme inputs (it clips them)
        probe = np.array([-(2**31), 2**31 - 1], dtype=pixels.dtype if pixels.dtype.kind == "f" else np.int64)
        try:
            low, high = sorted(apply_voi_lut(probe, ds, prefer_lut=True).astype(np.float64))
            pixels = apply_voi_lut(pixels, ds, prefer_lut=True).astype(np.float64)
        except Exception:
            raise DicomError("voi") from None
    else:
        pixels = pixels.astype(np.float64)
        low, high = float(pixels.min()), float(pixels.max())
    if not np.isfinite([low, high]).all() or high <= low:
        raise DicomError("no_contrast")
    image = np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        image = 1.0 - image
    return image


def laterality_tag(ds) -> str | None:
    """ "L"/"R" from ImageLaterality, else Laterality; None when absent or unknown."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword)
        if value in ("L", "R"):
            return value
    return None


def view_tag(ds) -> str | None:
    """ "CC"/"MLO" from ViewPosition; None for other views (ML, LM, XCCL...) or when absent."""
    value = _text(ds, "ViewPosition")
    return value if value in ("CC", "MLO") else None


def patient_hash(ds, salt: bytes) -> str | None:
    """Salted hash of the PatientID (None when absent); the ID itself never leaves here."""
    try:
        value = str(ds.get("PatientID", "") or "").strip()
    except Exception:
        raise DicomError("bad_header") from None
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


def preprocess(image: np.ndarray, size: int) -> tuple[np.ndarray, bool, float]:
    """Segment the breast, orient (chest wall left), blank the rest, crop, pad square, resize, quantise.

    ``image`` is float ``[H, W]`` in [0, 1]; returns (uint16 ``[size, size]`` in
    ``0..MAX_VALUE``, flipped, the breast mask's share of the image's pixels).
    """
    try:
        mask, flipped = segment.breast_mask(image)
    except segment.NoBreastError:
        raise DicomError("no_breast") from None
    if flipped:
        image, mask = image[:, ::-1], mask[:, ::-1]
    top, bottom, left, right = segment.mask_box(mask)
    breast = np.where(mask, image, 0.0)[top:bottom, left:right]
    out = square_resize(np.ascontiguousarray(breast, np.float32), size)
    return np.round(out * MAX_VALUE).astype(np.uint16), flipped, float(mask.mean())


def load_mammogram(
    path: str | os.PathLike,
    size: int,
    salt: bytes | None = None,
    *,
    frame: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Mammogram:
    """Read and preprocess one DICOM mammogram; ``DicomError`` (with a reason) when unusable.

    The header is read and checked (``check_header``: ``frame``, ``max_pixels``) before the
    pixel data is loaded. With ``salt`` the result carries the salted hash of the PatientID.
    pydicom's warnings and log are silenced here, as they can quote identifying element values.
    """
    if size < 8:
        raise ValueError(f"output size must be >= 8 pixels, got {size}")
    with _quiet():
        check_header(read_dicom(path, header_only=True), frame, max_pixels)
        try:
            ds = read_dicom(path)
        except DicomError:  # the header was read: the file ends inside the pixel data
            raise DicomError("truncated") from None
        image, flipped, fraction = preprocess(display_pixels(ds, frame), size)
        return Mammogram(
            image=image,
            laterality=laterality_tag(ds),
            view=view_tag(ds),
            flipped=flipped,
            breast_fraction=fraction,
            patient_hash=patient_hash(ds, salt) if salt else None,
        )
