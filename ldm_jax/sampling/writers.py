"""Output formats of sampling jobs: the bytes of one image file, and reading them back.

- ``png16`` (default): 16-bit grayscale PNG holding 12-bit values 0..4095, like FFDM.
- ``png8``: 8-bit grayscale PNG, 0..255.
- ``npz``: ``image`` float32 [H, W] in the model range [-1, 1] (unquantised) and ``labels``.
- ``dicom``: Secondary Capture, ImageType DERIVED\\SECONDARY, ConversionType SYN (synthetic
  image), SeriesDescription and ImageComments that say SYNTHETIC; no patient, study-date
  or institution data at all: the Type 2 attributes the standard requires (PatientName,
  PatientID, StudyDate...) are present and empty, so the file validates (``dciodvfy``).
  Laterality is the sample's laterality label (empty when not conditioned on), and
  PatientOrientation is empty. Its UIDs are derived from the job and the image index
  (``job_uid``), so a rerun writes the same bytes.

Every format is a deterministic function of the image and its metadata (no timestamps).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from ldm_jax import attributes
from ldm_jax.data.imageio import decode_png, encode_png, to_model_range
from ldm_jax.sampling.grid import FFDM_MAX, to_pixels

FORMATS = {"png16": ".png", "png8": ".png", "npz": ".npz", "dicom": ".dcm"}
SYNTHETIC = "SYNTHETIC"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same image gives the same bytes


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {tuple(FORMATS)}")


def encode_image(
    image: np.ndarray, fmt: str, *, labels: np.ndarray, description: str, job_uid: str, index: int
) -> bytes:
    """File bytes of one image ``[H, W]`` or ``[H, W, 1]`` in [-1, 1]."""
    _check_format(fmt)
    image = np.asarray(image, np.float32)
    image = image[..., 0] if image.ndim == 3 else image
    if fmt == "png16":
        return encode_png(to_pixels(image, FFDM_MAX, np.uint16))
    if fmt == "png8":
        return encode_png(to_pixels(image, 255, np.uint8))
    if fmt == "npz":
        return _npz({"image": image, "labels": np.asarray(labels, np.int32)})
    return _dicom(to_pixels(image, FFDM_MAX, np.uint16), _laterality(labels), description, job_uid, index)


def decode_image(data: bytes, fmt: str) -> np.ndarray:
    """float32 ``[H, W]`` in [-1, 1] from file bytes written by ``encode_image``."""
    _check_format(fmt)
    if fmt in ("png16", "png8"):
        pixels = decode_png(data)
        return to_model_range(pixels, FFDM_MAX if pixels.dtype == np.uint16 else 255)
    if fmt == "npz":
        with np.load(io.BytesIO(data)) as npz:
            return np.asarray(npz["image"], np.float32)
    import pydicom

    return to_model_range(pydicom.dcmread(io.BytesIO(data)).pixel_array)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) whose bytes depend only on the arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME),
                member.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
            )
    return buffer.getvalue()


# Type 2 attributes of the Patient and General Study modules: present, and empty here
_EMPTY_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PatientOrientation",
)


def _laterality(labels) -> str:
    """ "L"/"R" from the label array's laterality entry; "" when it is null or not given."""
    values = attributes.ATTRIBUTES["laterality"]
    labels = np.asarray(labels).reshape(-1)
    index = attributes.ATTRIBUTE_NAMES.index("laterality")
    value = int(labels[index]) if labels.size > index else -1
    return values[value] if 0 <= value < len(values) else ""


def _dicom(pixels: np.ndarray, laterality: str, description: str, job_uid: str, index: int) -> bytes:
    """A Secondary Capture DICOM of a synthetic 12-bit image (see the module docstring)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[job_uid, "image", str(index)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[job_uid, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[job_uid, "series"])
    for keyword in _EMPTY_TYPE_2:
        setattr(ds, keyword, "")
    ds.Modality = "OT"
    ds.Laterality = laterality
    ds.ConversionType = "SYN"  # DICOM defined term: synthetic image
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesDescription = SYNTHETIC
    ds.ImageComments = f"{SYNTHETIC} image generated by ldm_jax, not a patient: {description}"[:10240]
    ds.BurnedInAnnotation = "NO"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(pixels, "<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
