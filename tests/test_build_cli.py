"""The build CLI: phantoms and DICOM builds, salt file, build report, failures."""

import csv
import json
import stat

import pytest
from test_dicom import write_dicom

from ldm_jax.data import build, dicom, pipeline
from ldm_jax.data.phantoms import generate_phantom


def test_build_phantoms_then_read(tmp_path):
    assert build.main(["--dataset", "mammo_phantoms", "--config", "64_tiny", "--data-dir", str(tmp_path)]) == 0
    source = pipeline.load_source("mammo_phantoms", str(tmp_path), "validation", config="64_tiny")
    assert len(source) == 4


@pytest.fixture
def dicom_dir(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    rows = []
    for i in range(4):
        p = generate_phantom(100 + i, size=64)
        write_dicom(
            root / f"{i}.dcm",
            p.image,
            patient_id=f"PID-77{i // 2}",
            patient_name="ROE^RICHARD",
            laterality="LR"[p.laterality],
            view=("CC", "MLO")[p.view],
        )
        rows.append([f"{i}.dcm", "ABCD"[p.density], ("none", "mass", "calcification")[p.finding]])
    (root / "4.dcm").write_bytes(b"garbage")
    rows.append(["4.dcm", "A", "none"])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "density", "finding"]] + rows)
    return root


def _dicom_args(tmp_path, dicom_dir, *extra):
    return [
        "--dataset",
        "mammo_dicom",
        "--config",
        "64",
        "--data-dir",
        str(tmp_path / "data"),
        "--dicom-dir",
        str(dicom_dir),
        "--labels",
        str(dicom_dir / "labels.csv"),
        *extra,
    ]


def test_build_dicom_with_salt_file_and_report(tmp_path, dicom_dir):
    assert build.main(_dicom_args(tmp_path, dicom_dir, "--max-fail-fraction", "0.25", "--workers", "2")) == 0
    salt_file = tmp_path / "data" / "mammo_dicom.salt"
    salt = salt_file.read_bytes()
    assert len(salt) == 64 and stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    report = json.loads((tmp_path / "data" / "mammo_dicom-64.build_report.json").read_text())
    assert report["skipped"] == [{"row": "labels.csv:6", "reason": "not a DICOM file (no DICM preamble)"}]
    assert sum(report["written"].values()) == 4
    total = 0
    for split, n in report["written"].items():
        if n:
            source = pipeline.load_source("mammo_dicom", str(tmp_path / "data"), split, config="64")
            total += len(source)
            patients = {source[i]["patient"].decode() for i in range(len(source))}
            assert patients <= {dicom.salted_hash(salt, f"PID-77{k}") for k in (0, 1)}
    assert total == 4
    for path in (tmp_path / "data" / "mammo_dicom").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert salt not in data and b"ROE^RICHARD" not in data and b"PID-77" not in data
    # a second run finds the data set built and changes nothing
    assert build.main(_dicom_args(tmp_path, dicom_dir)) == 0


def test_too_many_failures_exit_1_with_report_and_no_data_set(tmp_path, dicom_dir, capsys):
    args = _dicom_args(tmp_path, dicom_dir, "--max-fail-fraction", "0", "--salt", "s3cret")
    assert build.main(args) == 1
    assert "1 of 5 images could not be used" in capsys.readouterr().err
    report = json.loads((tmp_path / "data" / "mammo_dicom-64.build_report.json").read_text())
    assert report["skipped"][0]["row"] == "labels.csv:6" and b"s3cret" not in json.dumps(report).encode()
    assert not list((tmp_path / "data").rglob("dataset_info.json"))
    assert not (tmp_path / "data" / "mammo_dicom.salt").exists()


def test_missing_dicom_arguments_are_a_usage_error(tmp_path, capsys):
    assert build.main(["--dataset", "mammo_dicom", "--data-dir", str(tmp_path)]) == 2
    assert "needs --dicom-dir and --labels" in capsys.readouterr().err


def test_missing_file_named_in_csv_fails(tmp_path, dicom_dir, capsys):
    with open(dicom_dir / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["nowhere.dcm", "B", "none"])
    assert build.main(_dicom_args(tmp_path, dicom_dir, "--salt", "x")) == 2  # bad input
    err = capsys.readouterr().err
    assert "name DICOM files that do not exist" in err and "labels.csv:7" in err
