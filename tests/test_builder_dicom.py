"""The mammo_dicom TFDS builder: CSV layouts, a tiny build without TensorFlow, failures, no PHI."""

import csv
import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_dicom import write_dicom

from ldm_jax import attributes
from ldm_jax.data import dicom
from ldm_jax.data.builders import mammo_dicom
from ldm_jax.data.imageio import decode_png
from ldm_jax.data.phantoms import generate_phantom

SALT = b"test-salt-not-for-production-0001"
PATIENTS = [(f"DOE^JANE{i}", f"PID-90{i}7") for i in range(6)]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory):
    """12 phantom DICOMs of 6 patients (3 special encodings) + a truncated and a non-image file."""
    from pydicom.uid import JPEG2000Lossless

    root = tmp_path_factory.mktemp("dicoms")
    rows, expected = [], {}
    for i, (name, pid) in enumerate(PATIENTS):
        for j, (lat, view) in enumerate([("L", "CC"), ("R", "MLO")]):
            p = generate_phantom(10 * i + j, size=64, laterality=lat, view=view)
            rel = f"case{i}/{lat}{view}.dcm"
            (root / f"case{i}").mkdir(exist_ok=True)
            kind = {(0, 0): "mono1", (1, 1): "j2k", (2, 0): "lut"}.get((i, j), "plain")
            pixels = 4095 - p.image.astype(np.int32) if kind == "mono1" else p.image
            write_dicom(
                root / rel,
                pixels,
                photometric="MONOCHROME1" if kind == "mono1" else "MONOCHROME2",
                compress=JPEG2000Lossless if kind == "j2k" else None,
                voi_lut=np.arange(4096) * 16 if kind == "lut" else None,
                patient_name=name,
                patient_id=pid,
                laterality=lat,
                view=view,
            )
            # the CSV gives density and finding; view/laterality come from the DICOM tags
            rows.append([rel, attributes.ATTRIBUTES["density"][p.density], p.finding, "", ""])
            expected[rel] = (p, pid)
    good = (root / "case0/LCC.dcm").read_bytes()
    (root / "bad").mkdir()
    (root / "bad/truncated.dcm").write_bytes(good[: len(good) // 2])
    write_dicom(root / "bad/report.dcm", None, with_pixels=False, patient_id="PID-9057", patient_name="DOE^JANE5")
    rows += [["bad/truncated.dcm", "B", "none", "", ""], ["bad/report.dcm", "C", "mass", "", ""]]
    labels = _write_csv(root / "labels.csv", ["path", "density", "finding", "view", "laterality"], rows)
    return root, labels, expected


def _build(tmp_path, dicom_set, **kwargs):
    root, labels, _ = dicom_set
    builder = mammo_dicom.MammoDicom(
        data_dir=tmp_path / "data",
        config="64",
        dicom_dir=root,
        labels=labels,
        salt=SALT,
        split_fractions=(0.5, 0.25, 0.25),
        **kwargs,
    )
    builder.download_and_prepare(file_format="array_record")
    return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory, dicom_set):
    return _build(tmp_path_factory.mktemp("build"), dicom_set, max_fail_fraction=0.2)


def test_build_and_read_back_without_tensorflow(built, dicom_set):
    assert importlib.util.find_spec("tensorflow") is None
    root, _, expected = dicom_set
    by_id = {dicom.salted_hash(SALT, "path:" + rel): rel for rel in expected}
    seen, patients_per_split = set(), {}
    for split in built.info.splits:
        source = built.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        for example in source:
            rel = by_id[example["id"].decode()]
            phantom, pid = expected[rel]
            image = decode_png(example["image"])
            assert image.dtype == np.uint16 and image.shape == (64, 64)
            loaded = dicom.load_mammogram(root / rel, 64)
            np.testing.assert_array_equal(image, loaded.image)
            assert example["breast_fraction"] == pytest.approx(loaded.breast_fraction, abs=1e-6)
            assert 0.3 < example["breast_fraction"] < 0.9
            assert [example[a] for a in attributes.ATTRIBUTE_NAMES] == phantom.labels.tolist()
            assert example["patient"].decode() == dicom.salted_hash(SALT, pid)
            patients_per_split.setdefault(split, set()).add(example["patient"])
            seen.add(rel)
    assert seen == set(expected)  # all 12 good images, none twice
    splits = list(patients_per_split.values())
    assert all(a.isdisjoint(b) for i, a in enumerate(splits) for b in splits[i + 1 :])
    assert built.info.metadata["max_value"] == dicom.MAX_VALUE


def test_build_report_lists_bad_files_by_csv_line(built):
    report = built.report
    assert report["images_in_csv"] == 14 and sum(report["written"].values()) == 12
    skipped = {s["row"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"labels.csv:14", "labels.csv:15"}
    assert "truncated" in skipped["labels.csv:14"] and "no pixel data" in skipped["labels.csv:15"]


def test_no_patient_identifier_or_salt_written(built, dicom_set):
    import pydicom

    root, _, _ = dicom_set
    secrets = [SALT, b"Saint Example"] + [s.encode() for pair in PATIENTS for s in pair]
    secrets += [b"DOE", b"PID-90"]
    secrets += [str(pydicom.dcmread(p).SOPInstanceUID).encode() for p in root.rglob("case*/*.dcm")]
    files = [p for p in pathlib.Path(built.data_dir).parents[2].rglob("*") if p.is_file()]
    assert any(p.name.endswith("array_record-00000-of-00001") for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} found in {path.name}"
    report = repr(built.report).encode()
    assert not any(s in report for s in secrets) and b"case" not in report


def test_too_many_failures_fail_the_build_and_leave_nothing(tmp_path, dicom_set):
    with pytest.raises(mammo_dicom.BuildError, match=r"3 of 14 images could not be used|2 of 14 images"):
        _build(tmp_path, dicom_set, max_fail_fraction=0.1)
    assert not list((tmp_path / "data").rglob("dataset_info.json"))
    assert not list((tmp_path / "data").rglob("*.array_record*"))


def test_missing_files_fail_before_any_work(tmp_path, dicom_set):
    root, _, _ = dicom_set
    labels = _write_csv(tmp_path / "l.csv", ["path", "density"], [["case0/LCC.dcm", "A"], ["nope/x.dcm", "B"]])
    with pytest.raises(FileNotFoundError, match=r"1 label CSV row\(s\).*l\.csv:3"):
        mammo_dicom.read_label_csvs(labels, root)


def test_vindr_layout(tmp_path):
    for study, image in [("s1", "i1"), ("s1", "i2"), ("s2", "i3")]:
        (tmp_path / "images" / study).mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / study / f"{image}.dicom").touch()
    header = [
        "study_id",
        "series_id",
        "image_id",
        "laterality",
        "view_position",
        "height",
        "width",
        "breast_birads",
        "breast_density",
        "split",
    ]
    labels = _write_csv(
        tmp_path / "breast-level_annotations.csv",
        header,
        [
            ["s1", "x", "i1", "L", "CC", 10, 10, "BI-RADS 1", "DENSITY C", "training"],
            ["s1", "x", "i2", "R", "MLO", 10, 10, "BI-RADS 4", "DENSITY D", "training"],
            ["s2", "x", "i3", "R", "CC", 10, 10, "BI-RADS 2", "DENSITY A", "test"],
        ],
    )
    rows = {r.path: r for r in mammo_dicom.read_label_csvs(labels, tmp_path)}
    assert (rows["images/s1/i1.dicom"].density, rows["images/s1/i1.dicom"].finding) == (2, 0)  # BI-RADS 1
    assert rows["images/s1/i2.dicom"].finding is None and rows["images/s2/i3.dicom"].patient == "s2"
    assert (rows["images/s1/i2.dicom"].view, rows["images/s1/i2.dicom"].laterality) == (1, 1)
    _write_csv(
        tmp_path / "finding_annotations.csv",
        ["image_id", "finding_categories"],
        [["i2", "['Suspicious Calcification']"], ["i2", "['Mass', 'Asymmetry']"], ["i3", "['No Finding']"]],
    )
    rows = {r.path: r for r in mammo_dicom.read_label_csvs(labels, tmp_path, "vindr")}
    assert rows["images/s1/i2.dicom"].finding == 1 and rows["images/s2/i3.dicom"].finding == 0


def test_cbis_layout_with_nbia_folders(tmp_path):
    nbia = tmp_path / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016-DDSM-1" / "1.000000-full-2"
    nbia.mkdir(parents=True)
    (nbia / "1-1.dcm").touch()
    header = [
        "patient_id",
        "breast_density",
        "left or right breast",
        "image view",
        "abnormality id",
        "abnormality type",
        "image file path",
    ]
    mass = _write_csv(
        tmp_path / "mass.csv",
        header,
        [["P_00001", 3, "LEFT", "CC", 1, "mass", "Mass-Training_P_00001_LEFT_CC/1.3.6.1/1.3.6.2/000000.dcm\n"]],
    )
    calc = _write_csv(
        tmp_path / "calc.csv",
        [h.replace("breast_density", "breast density") for h in header],
        [["P_00001", 3, "LEFT", "CC", 1, "calcification", "Mass-Training_P_00001_LEFT_CC/1.3.6.1/9/000000.dcm"]],
    )
    (row,) = mammo_dicom.read_label_csvs([calc, mass], tmp_path)
    assert row.path == "Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-1/1.000000-full-2/1-1.dcm"
    assert (row.density, row.finding, row.view, row.laterality, row.patient) == (2, 1, 0, 0, "P_00001")


def test_bad_csv_values_name_the_line(tmp_path):
    (tmp_path / "a.dcm").touch()
    labels = _write_csv(tmp_path / "l.csv", ["path", "density"], [["a.dcm", "E"]])
    with pytest.raises(ValueError, match=r"l\.csv:2.*density"):
        mammo_dicom.read_label_csvs(labels, tmp_path)
    with pytest.raises(ValueError, match="cannot tell the layout"):
        mammo_dicom.read_label_csvs(_write_csv(tmp_path / "m.csv", ["file"], [["a.dcm"]]), tmp_path)


def test_split_of_is_deterministic_and_follows_fractions():
    hashes = [dicom.salted_hash(SALT, str(i)) for i in range(3000)]
    splits = [mammo_dicom.split_of(h, (0.8, 0.1, 0.1)) for h in hashes]
    assert splits == [mammo_dicom.split_of(h, (0.8, 0.1, 0.1)) for h in hashes]
    fractions = [splits.count(s) / len(splits) for s in mammo_dicom.SPLITS]
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.025)


def _secrets(root, expected):
    """Strings that must never reach the written data set: salt, names, IDs, UIDs and the inputs'
    relative paths (in CBIS-DDSM layouts a path carries the patient ID, e.g. Mass-Training_P_00001_…)."""
    import pydicom

    secrets = [SALT, b"Saint Example", b"DOE", b"PID-90"] + [s.encode() for pair in PATIENTS for s in pair]
    secrets += [str(pydicom.dcmread(p).SOPInstanceUID).encode() for p in root.rglob("case*/*.dcm")]
    rels = list(expected) + ["bad/truncated.dcm", "bad/report.dcm"]
    secrets += [rel.encode() for rel in rels] + [rel.split("/")[0].encode() + b"/" for rel in rels]
    return secrets


def _as_bytes(value) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str):
        return [value.encode()]
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        return [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
    return [str(array.tolist()).encode()]


def test_every_record_read_back_holds_only_known_features_and_no_identifier(built, dicom_set):
    """Decode every record with the project's own reader (a byte scan of the files can miss a
    string inside a compressed record) and scan the decoded values."""
    from ldm_jax.data.pipeline import load_source

    root, _, expected = dicom_set
    secrets = _secrets(root, expected)
    keys = {"image", "id", "patient", "breast_fraction", *attributes.ATTRIBUTE_NAMES}
    assert set(built.info.features) == keys
    data_dir = str(pathlib.Path(built.data_dir).parents[2])
    count = 0
    for split in built.info.splits:
        for example in load_source("mammo_dicom", data_dir, split, config="64"):
            count += 1
            assert set(example) == keys
            for name in ("id", "patient"):
                value = example[name].decode() if isinstance(example[name], bytes) else str(example[name])
                assert len(value) == 32 and set(value) <= set("0123456789abcdef"), (name, value)
            png = example["image"]
            assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
            assert not any(chunk in png for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf")), "PNG metadata"
            assert decode_png(png).shape == (64, 64)
            for name, value in example.items():
                for data in _as_bytes(value):
                    for secret in secrets:
                        assert secret not in data, f"{secret!r} in feature {name!r} of a {split} record"
    assert count == 12
    # and the raw files too, now with the relative paths among the secrets
    for path in (p for p in pathlib.Path(data_dir).rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} found in {path.name}"


def test_malformed_corpus_build_stores_or_reports_every_file(tmp_path, capfd):
    """Each crafted file ends as a stored image or a report line with its fixed reason; the
    terminal shows no traceback and the report no header text."""
    from test_dicom import _malformed_corpus

    root = tmp_path / "corpus"
    root.mkdir()
    cases = _malformed_corpus(root, generate_phantom(3, size=64, laterality="L", view="CC"))
    rows = [["good.dcm", "P"]] + [[path.name, "P"] for path, _ in cases]
    labels = _write_csv(root / "labels.csv", ["path", "patient"], rows)
    capfd.readouterr()
    builder = _build(tmp_path, (root, labels, None), max_fail_fraction=1.0)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "DOE" not in out + err
    expected = {f"labels.csv:{i + 3}": dicom.REASONS[key] for i, (_, key) in enumerate(cases)}
    assert {s["row"]: s["reason"] for s in builder.report["skipped"]} == expected
    assert sum(builder.report["written"].values()) == 1


def test_failure_budget_counts_exactly():
    assert mammo_dicom.failure_budget(0.29, 100) == 29  # int(0.29 * 100) is 28
    assert mammo_dicom.failure_budget(0.05, 19) == 0 and mammo_dicom.failure_budget(1.0, 7) == 7
    assert [mammo_dicom.failure_budget(f / 100, 100) for f in range(101)] == list(range(101))


def test_short_rows_are_padded_and_disagreeing_duplicates_name_both_lines(tmp_path):
    (tmp_path / "a.dcm").touch()
    labels = tmp_path / "l.csv"
    labels.write_text("density,path,finding,laterality\nA,a.dcm\n")  # the row ends early
    (row,) = mammo_dicom.read_label_csvs(labels, tmp_path)
    assert (row.path, row.density, row.finding, row.laterality) == ("a.dcm", 0, None, None)
    labels.write_text("path,finding,laterality\na.dcm,mass,L\na.dcm,calcification,\na.dcm,none,R\n")
    with pytest.raises(ValueError, match=r"l\.csv:2 and l\.csv:4 name the same image with different laterality"):
        mammo_dicom.read_label_csvs(labels, tmp_path)
    labels.write_text("path,finding,laterality\na.dcm,calcification,L\na.dcm,mass,\n")  # findings merge
    (row,) = mammo_dicom.read_label_csvs(labels, tmp_path)
    assert (row.finding, row.laterality) == (1, 0)
