"""Images to edit: PNG or DICOM files, read with the training preprocessing.

PNGs hold stored pixel values (uint8: 0..255; uint16: the 12-bit convention 0..4095, as
the phantom data sets and ``sample.py --format png16`` write them). DICOMs go through
``ldm_jax.data.dicom.load_mammogram`` (VOI LUT, MONOCHROME1, chest wall left, breast crop),
like the ``mammo_dicom`` builder. Nothing from a DICOM header is kept: an input is referred
to by its position in the sorted input list and the SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np

from ldm_jax.data import dicom
from ldm_jax.data.imageio import decode_png, to_model_range

PNG_SUFFIXES = (".png",)
DICOM_SUFFIXES = (".dcm", ".dicom")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_dicom(path: pathlib.Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def list_inputs(path) -> list[pathlib.Path]:
    """The edit inputs: ``path`` itself, or the PNG and DICOM files under the folder ``path``
    (by suffix, or for suffix-less files by the DICOM preamble), sorted by relative path."""
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"edit input {path} does not exist")
    files = [
        p
        for p in sorted(path.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in PNG_SUFFIXES + DICOM_SUFFIXES or (not p.suffix and _is_dicom(p)))
    ]
    if not files:
        raise FileNotFoundError(f"no PNG or DICOM files in edit input folder {path}")
    return files


def read_input(path, image_size: int) -> np.ndarray:
    """float32 ``[image_size, image_size]`` in [-1, 1]; ``ValueError`` naming the file when unusable."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read edit input {path}: {e.strerror}") from None
    if data.startswith(_PNG_MAGIC):
        try:
            pixels = decode_png(data)
        except Exception as e:  # PIL raises many types on corrupt files
            raise ValueError(f"edit input {path} is not a readable PNG ({type(e).__name__})") from None
        max_value = 255 if pixels.dtype == np.uint8 else dicom.MAX_VALUE
        if pixels.max() > max_value:
            raise ValueError(
                f"edit input {path}: 16-bit PNG values up to {pixels.max()} exceed the 12-bit "
                f"range 0..{dicom.MAX_VALUE} the models are trained on"
            )
        return to_model_range(pixels, max_value, image_size)
    if data[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        try:
            image = dicom.load_mammogram(path, image_size).image
        except dicom.DicomError as e:
            raise ValueError(f"edit input {path} is not a usable DICOM mammogram: {e.reason}") from None
        return to_model_range(image, dicom.MAX_VALUE, image_size)
    raise ValueError(f"edit input {path} is neither a PNG nor a DICOM file")


def digest(path) -> str:
    """SHA-256 (hex) of an input file's bytes: how the manifest names the source image."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
