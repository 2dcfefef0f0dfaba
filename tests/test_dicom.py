"""DICOM decoding and preprocessing on synthetic mammograms written with pydicom."""

import warnings

import numpy as np
import pytest

from ldm_jax.data import dicom
from ldm_jax.data.phantoms import generate_phantom


def write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    compress=None,
    window=None,
    voi_lut=None,
    rescale=None,
    patient_name="DOE^JANE",
    patient_id="PID-12345",
    laterality="L",
    view="CC",
    with_pixels=True,
):
    """Write a 12-bit mammogram DICOM (MG, for presentation) carrying patient identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_id, "MG"
    ds.InstitutionName = "Saint Example Hospital"
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    if with_pixels:
        pixels = np.asarray(pixels, np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if voi_lut is not None:
            item = Dataset()
            item.LUTDescriptor = [len(voi_lut), 0, 16]
            item.LUTData = np.asarray(voi_lut, "<u2").tobytes()
            ds.VOILUTSequence = [item]
        if compress:
            ds.compress(compress, pixels)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(3, size=64, laterality="L", view="CC")


def _display(path):
    return dicom.display_pixels(dicom.read_dicom(path))


def test_monochrome1_is_inverted(tmp_path, phantom):
    mono2 = _display(write_dicom(tmp_path / "m2.dcm", phantom.image))
    mono1 = _display(write_dicom(tmp_path / "m1.dcm", 4095 - phantom.image.astype(np.int32), photometric="MONOCHROME1"))
    lo, hi = phantom.image.min(), phantom.image.max()
    np.testing.assert_allclose(mono2, (phantom.image - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)


def test_jpeg2000_lossless_decodes_exactly(tmp_path, phantom):
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", phantom.image, compress=JPEG2000Lossless)
    ds = dicom.read_dicom(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(ds.pixel_array, phantom.image)
    np.testing.assert_allclose(dicom.display_pixels(ds), _display(write_dicom(tmp_path / "raw.dcm", phantom.image)))


def test_window_follows_dicom_linear_formula(tmp_path, phantom):
    center, width = 1500.0, 2001.0
    out = _display(write_dicom(tmp_path / "w.dcm", phantom.image, window=(center, width)))
    expected = np.clip((phantom.image - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_window_after_rescale(tmp_path, phantom):
    # window given in rescaled units (2 * stored - 100)
    out = _display(write_dicom(tmp_path / "rw.dcm", phantom.image, rescale=(2, -100), window=(2900, 5001)))
    rescaled = 2.0 * phantom.image - 100
    np.testing.assert_allclose(out, np.clip((rescaled - 2899.5) / 5000 + 0.5, 0, 1), atol=1e-6)


def test_voi_lut_is_preferred_and_applied(tmp_path, phantom):
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 60000).astype(np.uint16)  # nonlinear
    out = _display(write_dicom(tmp_path / "lut.dcm", phantom.image, voi_lut=lut, window=(10, 10)))
    np.testing.assert_allclose(out, lut[phantom.image] / 60000.0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 3, 4])
def test_breast_box_matches_phantom_mask(seed):
    p = generate_phantom(seed, size=64, laterality="L")
    top, bottom, left, right = dicom.breast_box(p.image / 4095.0)
    rows, cols = np.nonzero(p.breast_mask)
    # the mask's outermost skin pixels are ~0 in the image, hence a pixel or two of slack
    assert abs(top - rows.min()) <= 1 and abs(bottom - (rows.max() + 1)) <= 1
    assert left == 0 and abs(right - (cols.max() + 1)) <= 2


def test_breast_box_ignores_separate_marker():
    image = np.zeros((40, 60), np.float32)
    image[5:35, 0:30] = 0.6  # breast at the chest wall
    image[2:6, 50:56] = 1.0  # a bright "L CC" marker, separated by background
    assert dicom.breast_box(image) == (5, 35, 0, 30)


def test_right_breast_is_flipped_to_chest_wall_left(tmp_path):
    right = generate_phantom(4, size=64, laterality="R", view="MLO")
    left_version = np.ascontiguousarray(right.image[:, ::-1])
    m_right = dicom.load_mammogram(write_dicom(tmp_path / "r.dcm", right.image, laterality="R", view="MLO"), 32)
    m_left = dicom.load_mammogram(write_dicom(tmp_path / "l.dcm", left_version), 32)
    assert m_right.flipped and not m_left.flipped
    assert (m_right.laterality, m_right.view) == ("R", "MLO")
    np.testing.assert_array_equal(m_right.image, m_left.image)
    assert m_right.image.shape == (32, 32) and m_right.image.dtype == np.uint16
    assert m_right.image[:, :4].mean() > m_right.image[:, -4:].mean()  # chest wall left
    assert m_right.image.max() <= dicom.MAX_VALUE and m_right.image.max() > 3000


def test_crop_pad_resize_geometry():
    image = np.zeros((100, 80), np.float32)
    image[10:90, 0:40] = 0.5  # breast 80 x 40: padded to 80 x 80 then resized
    out, flipped = dicom.preprocess(image, 16)
    assert not flipped
    row = out[8]
    assert row[:7].min() == round(0.5 * 4095)  # left half is breast
    assert row[9:].max() == 0  # right half is padding
    assert out[0, 0] == round(0.5 * 4095) and out[15, 0] == round(0.5 * 4095)  # rows fill the height


def test_bad_files_raise_dicom_error_with_reason(tmp_path, phantom):
    from pydicom.uid import JPEG2000Lossless, MPEG2MPML

    good = write_dicom(tmp_path / "good.dcm", phantom.image).read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(good[: len(good) * 2 // 3])
    (tmp_path / "junk.dcm").write_bytes(b"this is not dicom" * 20)
    write_dicom(tmp_path / "sr.dcm", None, with_pixels=False)
    mpeg = dicom.read_dicom(write_dicom(tmp_path / "j2k.dcm", phantom.image, compress=JPEG2000Lossless))
    mpeg.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no image decoder exists
    mpeg.save_as(tmp_path / "mpeg.dcm")
    cases = {
        "trunc.dcm": "corrupt or truncated",
        "junk.dcm": "not a DICOM",
        "sr.dcm": "no pixel data",
        "mpeg.dcm": "unsupported transfer syntax MPEG2",
    }
    for name, reason in cases.items():
        with pytest.raises(dicom.DicomError, match=reason):
            dicom.load_mammogram(tmp_path / name, 32)


def test_patient_hash_is_salted_and_identifier_free(tmp_path, phantom):
    path = write_dicom(tmp_path / "p.dcm", phantom.image, patient_id="PID-12345")
    h1 = dicom.load_mammogram(path, 32, salt=b"one").patient_hash
    assert h1 == dicom.header_patient_hash(path, b"one") == dicom.salted_hash(b"one", "PID-12345")
    assert h1 != dicom.salted_hash(b"two", "PID-12345") and "12345" not in h1 and len(h1) == 32
    assert dicom.load_mammogram(path, 32).patient_hash is None
    with pytest.raises(ValueError, match="salt"):
        dicom.salted_hash(b"", "x")


def test_pydicom_warnings_and_log_are_silenced(tmp_path, phantom, capfd, caplog):
    """pydicom's warnings can quote element values (e.g. "Invalid value for VR DA: '...'"):
    our readers emit none. Here a too-long PatientID makes plain pydicom warn on read."""
    import pydicom
    from pydicom import config

    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = write_dicom(tmp_path / "long.dcm", phantom.image, patient_id="SECRET" * 12)
    finally:
        config.settings.writing_validation_mode = mode
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmread(path).PatientID  # noqa: B018
    assert "exceeds the maximum length" in caplog.text
    caplog.clear()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dicom.load_mammogram(path, 32, salt=b"s")
        dicom.header_patient_hash(path, b"s")
    out, err = capfd.readouterr()
    assert not caught, [str(w.message) for w in caught]
    assert not caplog.text and "maximum length" not in out + err
