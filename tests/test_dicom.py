"""DICOM decoding and preprocessing on synthetic mammograms written with pydicom."""

import warnings

import numpy as np
import pytest

from ldm_jax.data import dicom, segment
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


def test_separate_marker_is_background_and_out_of_the_crop():
    image = np.zeros((80, 120), np.float32)
    image[10:70, 0:60] = 0.6  # breast at the chest wall
    image[4:16, 96:112] = 1.0  # a bright "L CC" marker, separated by background
    out, flipped, fraction = dicom.preprocess(image, 16)
    assert not flipped and out.max() == round(0.6 * 4095)  # the marker is gone
    grown = (60 + 2 * segment.GROW) * (60 + segment.GROW)  # the breast plus the mask's grown rim
    assert fraction == pytest.approx(grown / image.size, abs=0.005)


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
    image[10:90, 0:40] = 0.5  # breast 80 x 40 (+ the mask's grown rim): padded square, resized
    out, flipped, _ = dicom.preprocess(image, 16)
    assert not flipped
    row = out[8]
    assert row[:7].min() == round(0.5 * 4095)  # left half is breast
    assert row[9:].max() == 0  # right half is padding
    assert out[1, 0] == round(0.5 * 4095) and out[14, 0] == round(0.5 * 4095)  # rows fill the height
    assert 0 < out[0, 0] < round(0.5 * 4095)  # but for the mask's rim of background


def _variant(path, source, raw=None, **tags):
    """``source`` with ``tags`` set (None deletes one) and ``raw`` (old, new) byte replacements."""
    import pydicom

    ds = pydicom.dcmread(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the crafted values it is asked to write
        for keyword, value in tags.items():
            if value is None:
                del ds[keyword]
            else:
                setattr(ds, keyword, value)
    ds.save_as(path)
    if raw:
        path.write_bytes(path.read_bytes().replace(*raw))
    return path


def _malformed_corpus(tmp_path, phantom):
    """(file, expected reason key) pairs: crafted, truncated and non-mammogram DICOMs."""
    from pydicom.uid import JPEG2000Lossless, MPEG2MPML, RLELossless

    good = write_dicom(tmp_path / "good.dcm", phantom.image)
    data = good.read_bytes()
    pixel_start = len(data) - phantom.image.nbytes - 12  # the (7FE0,0010) Pixel Data element, last
    cases = [(tmp_path / "junk.dcm", "not_dicom"), (tmp_path / "sr.dcm", "no_pixels")]
    (tmp_path / "junk.dcm").write_bytes(b"this is not dicom" * 20)
    write_dicom(tmp_path / "sr.dcm", None, with_pixels=False)
    for cut in (pixel_start + 12, pixel_start + 100, len(data) - 2):  # inside the pixel data
        (tmp_path / f"cut{cut}.dcm").write_bytes(data[:cut])
        cases.append((tmp_path / f"cut{cut}.dcm", "truncated"))
    mpeg = dicom.read_dicom(write_dicom(tmp_path / "j2k.dcm", phantom.image, compress=JPEG2000Lossless))
    mpeg.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no image decoder exists
    mpeg.save_as(tmp_path / "mpeg.dcm")
    cases.append((tmp_path / "mpeg.dcm", "syntax"))
    rle = dicom.read_dicom(write_dicom(tmp_path / "rle.dcm", phantom.image, compress=RLELossless))
    rle.PixelData = rle.PixelData[: len(rle.PixelData) // 2] + bytes(len(rle.PixelData) - len(rle.PixelData) // 2)
    rle.save_as(tmp_path / "rle_bad.dcm")  # decoded segments come out short: pydicom logs a traceback
    cases.append((tmp_path / "rle_bad.dcm", "truncated"))
    variants = {
        "ct": ("not_mg", {"Modality": "CT"}),
        "rgb": ("colour", {"PhotometricInterpretation": "RGB"}),
        "phi_photometric": ("colour", {"PhotometricInterpretation": "DOE^JANE PID-12345"}),
        "three_samples": ("colour", {"SamplesPerPixel": 3}),
        "one_bit": ("one_bit", {"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0}),
        "one_bit_stored": ("one_bit", {"BitsStored": 1, "HighBit": 0}),
        "frames": ("multi_frame", {"NumberOfFrames": 2}),
        "huge": ("too_large", {"Rows": 60000, "Columns": 60000}),
        "zero_rows": ("bad_size", {"Rows": 0}),
        "no_rows": ("bad_size", {"Rows": None}),
        "bad_frames": (
            "bad_size",
            {"NumberOfFrames": 7, "raw": (b"\x28\x00\x08\x00IS\x02\x007 ", b"\x28\x00\x08\x00IS\x02\x00ab")},
        ),
        "bad_vr": ("bad_size", {"raw": (b"\x28\x00\x10\x00US", b"\x28\x00\x10\x00DA")}),
        "bad_window": ("voi", {"WindowCenter": 100, "WindowWidth": 0}),
    }
    for name, (key, tags) in variants.items():
        cases.append((_variant(tmp_path / f"{name}.dcm", good, **tags), key))
    small = generate_phantom(0, size=64).image[:40, :40]
    cases.append((write_dicom(tmp_path / "small.dcm", small), "too_small"))
    cases.append((write_dicom(tmp_path / "flat.dcm", np.full((64, 64), 700)), "no_contrast"))
    return cases


def test_malformed_corpus_ends_in_one_fixed_reason_each(tmp_path, phantom, capfd, caplog):
    """Every crafted file raises ``DicomError`` with the expected reason from the fixed
    vocabulary; nothing reaches the terminal or the log (no decoder traceback, no tag value)."""
    cases = _malformed_corpus(tmp_path, phantom)
    capfd.readouterr()
    caplog.clear()
    got = {}
    for path, key in cases:
        with pytest.raises(dicom.DicomError) as error:
            dicom.load_mammogram(path, 32)
        got[path.name] = error.value.key
        assert error.value.reason == dicom.REASONS[error.value.key] and "DOE" not in error.value.reason
    assert got == {path.name: key for path, key in cases}
    out, err = capfd.readouterr()
    assert out + err == "" and caplog.text == ""


def test_chosen_frame_of_a_multi_frame_image(tmp_path):
    frames = [generate_phantom(s, size=64, laterality="L").image for s in (1, 2)]
    single = dicom.load_mammogram(write_dicom(tmp_path / "one.dcm", frames[1]), 32).image
    path = _variant(tmp_path / "two.dcm", write_dicom(tmp_path / "t.dcm", frames[0]), NumberOfFrames=2)
    path.write_bytes(path.read_bytes() + b"")  # same header, now with both frames' data
    ds = dicom.read_dicom(path)
    ds.PixelData = np.stack(frames).astype("<u2").tobytes()
    ds.save_as(path)
    np.testing.assert_array_equal(dicom.load_mammogram(path, 32, frame=1).image, single)
    with pytest.raises(dicom.DicomError, match="chosen frame"):
        dicom.load_mammogram(path, 32, frame=2)


def test_size_limit_is_an_option(tmp_path, phantom):
    path = write_dicom(tmp_path / "p.dcm", phantom.image)
    with pytest.raises(dicom.DicomError, match="max-pixels"):
        dicom.load_mammogram(path, 32, max_pixels=64 * 64 - 1)
    assert dicom.load_mammogram(path, 32, max_pixels=64 * 64).image.shape == (32, 32)


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
