"""The build CLI: phantoms and DICOM builds, salt file, build report, failures."""

import csv
import json
import re
import stat

import pytest
from test_dicom import write_dicom

from ldm_jax.data import build, dicom, pipeline
from ldm_jax.data.imageio import decode_png
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


def test_build_dicom_with_salt_file_and_report(tmp_path, dicom_dir, capsys):
    assert build.main(_dicom_args(tmp_path, dicom_dir, "--max-fail-fraction", "0.25", "--workers", "2")) == 0
    assert "warning: 4 image(s) have no patient in the label CSV" in capsys.readouterr().err
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


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--max-fail-fraction", "1.5", "max fail fraction 1.5"),
        ("--split-fractions", "0.5,0.5", "split fractions '0.5,0.5'"),
        ("--workers", "0", "workers 0"),
        ("--frame", "-1", "frame -1"),
        ("--max-pixels", "100", "max pixels 100"),
        ("--config", "300", "--config '300': mammo_dicom has configs 64, 128, 256, 512, 1024"),
    ],
)
def test_bad_option_values_are_one_line_usage_errors_before_any_write(
    tmp_path, dicom_dir, capsys, flag, value, expected
):
    args = _dicom_args(tmp_path, dicom_dir)
    if flag == "--config":
        args.remove("--config"), args.remove("64")
    assert build.main([*args, flag, value]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m ldm_jax.data.build: error: {expected}" + err.split(expected, 1)[1]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # not even the salt file


def _split_patients(salt: str) -> dict[str, str]:
    """A patient name per split under the default fractions 0.8/0.1/0.1 and ``salt``."""
    from ldm_jax.data.builders.mammo_dicom import split_of

    names = {}
    for i in range(200):
        names.setdefault(split_of(dicom.salted_hash(salt.encode(), f"P{i}"), (0.8, 0.1, 0.1)), f"P{i}")
    return names


@pytest.fixture
def lost_validation(tmp_path):
    """Good images for the train and test patients; the validation patient's two files are junk."""
    root = tmp_path / "lost"
    root.mkdir()
    names = _split_patients("s")
    rows = [["path", "patient"]]
    for split, patient in names.items():
        for k in range(2):
            path = root / f"{split}{k}.dcm"
            if split == "validation":
                path.write_bytes(b"junk")
            else:
                write_dicom(path, generate_phantom(k, size=64, laterality="L").image)
            rows.append([path.name, patient])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_split_losing_every_image_is_a_one_line_error_before_writing(tmp_path, lost_validation, capsys):
    args = _dicom_args(tmp_path, lost_validation, "--salt", "s", "--max-fail-fraction", "1.0")
    assert build.main(args) == 1
    err = capsys.readouterr().err
    assert "error: split 'validation' would be empty: all 2 of its images are unusable" in err
    assert "Traceback" not in err and "No examples were yielded" not in err
    assert not list((tmp_path / "data").rglob("*array_record*")) and not list(
        (tmp_path / "data").rglob("dataset_info*")
    )
    report = json.loads((tmp_path / "data" / "mammo_dicom-64.build_report.json").read_text())
    assert "split 'validation' would be empty" in report["error"] and len(report["skipped"]) == 2


def test_split_losing_every_image_is_left_out_when_allowed(tmp_path, lost_validation, capsys):
    args = _dicom_args(tmp_path, lost_validation, "--salt", "s", "--max-fail-fraction", "0.5")
    assert build.main([*args, "--allow-missing-splits"]) == 0
    err = capsys.readouterr().err
    assert "warning: split 'validation' left out: all 2 of its images are unusable" in err
    report = json.loads((tmp_path / "data" / "mammo_dicom-64.build_report.json").read_text())
    assert report["written"] == {"train": 2, "validation": 0, "test": 2}
    source = pipeline.load_source("mammo_dicom", str(tmp_path / "data"), "test", config="64")
    assert len(source) == 2


def test_csv_stage_failure_writes_the_report_and_replaces_a_stale_one(tmp_path, dicom_dir, capsys):
    stale = tmp_path / "data" / "mammo_dicom-64.build_report.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"stale": true}')
    with open(dicom_dir / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["nowhere.dcm", "B", "none"])
    assert build.main(_dicom_args(tmp_path, dicom_dir, "--salt", "x")) == 2
    report = json.loads(stale.read_text())
    assert "stale" not in report and report["skipped"] == []
    assert "name DICOM files that do not exist" in report["error"] and "labels.csv:7" in report["error"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"density,finding,path\nA,none,0.dcm\nB\n", r"labels\.csv:3: the path is empty"),
        (b"path,density\n0.dcm,A\n1.dcm,caf\xe9\n", r"labels\.csv:3 is not UTF-8"),
        (b"path,density\n0.dcm,A,extra\n", r"labels\.csv:2 has 3 fields, the header 2"),
        (
            b"path,density\n0.dcm,A\n0.dcm,B\n",
            r"labels\.csv:2 and labels\.csv:3 name the same image with different density",
        ),
    ],
)
def test_bad_csvs_are_one_line_errors_naming_file_and_line(tmp_path, dicom_dir, capsys, content, expected):
    (dicom_dir / "labels.csv").write_bytes(content)
    assert build.main(_dicom_args(tmp_path, dicom_dir, "--salt", "x")) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err) and err.count("\n") == 2 and "Traceback" not in err  # + "build report:"


def test_no_config_builds_the_documented_default(tmp_path, dicom_dir, capsys):
    args = _dicom_args(tmp_path, dicom_dir, "--max-fail-fraction", "0.25", "--salt", "x")
    args.remove("--config"), args.remove("64")
    assert "512 for mammo_dicom" in " ".join(build.parser().format_help().split())
    assert build.main(args) == 0
    assert (tmp_path / "data" / "mammo_dicom-512.build_report.json").is_file()
    source = pipeline.load_source("mammo_dicom", str(tmp_path / "data"), "train", config="512")
    assert decode_png(source[0]["image"]).shape == (512, 512)
