"""TFDS builder ``mammo_dicom``: a folder of DICOM mammograms plus label CSVs -> array_record.

Label CSV layouts (``csv_format``):

* ``vindr``: VinDr-Mammo ``breast-level_annotations.csv`` (study_id, image_id, laterality,
  view_position, breast_density, breast_birads); images at
  ``images/<study_id>/<image_id>.dicom``. Findings come from ``finding_annotations.csv``
  beside it when present (Mass > Suspicious Calcification > No Finding), else BI-RADS 1
  means "none".
* ``cbis``: CBIS-DDSM case-description CSVs (mass/calc, train/test; pass several).
  ``image file path`` is tried as given, then, for the NBIA download layout, as the single
  ``.dcm`` file under its first folder.
* ``generic``: ``path,density,finding,view,laterality[,patient]``; values are names
  (``C``, ``mass``, ``MLO``, ``R``) or indices; empty means unknown. View and laterality
  fall back to the DICOM tags, the patient to the DICOM PatientID (a warning says so:
  CBIS-DDSM gives every image its own PatientID, so patient-level splits need the column).
* ``auto``: chosen from the header.

Rows naming one image are merged (a finding list: mass > calcification > none); rows that
disagree on density, view, laterality or patient are an error naming both lines.

Split by patient: a keyed hash (HMAC-SHA256 with a secret salt) of the patient decides
the split, so one patient's images never straddle splits. No identifier is written: the
``patient`` feature is the salted hash, ``id`` the salted hash of the file's path. Unknown
labels are stored as -1 (TFDS ClassLabel's "no label"); the pipeline maps them to null.
``breast_fraction`` is the share of the input image inside the breast mask (a check on the
crop). Files that are not usable mammograms are skipped with a reason from
``dicom.REASONS``; a split left without any image is an error before anything is written
(or, with ``allow_missing_splits``, left out with a warning).
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import csv
import dataclasses
import fractions
import io
import itertools
import multiprocessing
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from ldm_jax import attributes
from ldm_jax.data import dicom
from ldm_jax.data.imageio import encode_png

CSV_FORMATS = ("vindr", "cbis", "generic")
SPLITS = ("train", "validation", "test")
_FINDING_RANK = {None: 0, 0: 1, 2: 2, 1: 3}  # merge rows of one image: mass > calc > none > unknown


class BuildError(RuntimeError):
    """The build cannot produce a trustworthy data set (too many failures, bad inputs)."""


@dataclasses.dataclass
class ImageRow:
    """One image named by the label CSV(s). ``patient`` is a raw key: memory only, never written."""

    ref: str  # "file.csv:LINE", identifies the row without copying it
    path: str  # relative to the DICOM folder, as resolved
    patient: str | None
    density: int | None = None
    finding: int | None = None
    view: int | None = None
    laterality: int | None = None

    def merge(self, other: "ImageRow") -> None:
        """Fold another row for the same image into this one; ValueError naming both rows when
        they disagree on a label other than the finding (an image may hold several findings)."""
        for name in ("density", "view", "laterality", "patient"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(f"{self.ref} and {other.ref} name the same image with different {name}")
            if mine is None:
                setattr(self, name, theirs)
        if _FINDING_RANK[other.finding] > _FINDING_RANK[self.finding]:
            self.finding = other.finding


# ----------------------------------------------------------------------------- CSV parsing


def _read_csv(path: pathlib.Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Lower-cased header and ``(line number, row)`` pairs of a UTF-8 CSV file.

    Short rows are padded with empty cells; a row longer than the header, or text that is not
    UTF-8, is a ValueError naming the file and line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"label CSV {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"label CSV {path}:{line} is not UTF-8 text (save it as UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise ValueError(f"label CSV {path}:{reader.line_num} has {len(row)} fields, the header {len(header)}")
            rows.append((reader.line_num, {h: v.strip() for h, v in zip(header, row + [""] * len(header))}))
    except StopIteration:
        raise ValueError(f"label CSV {path} is empty") from None
    except csv.Error as e:
        raise ValueError(f"label CSV {path}:{reader.line_num} is not valid CSV ({e})") from None
    return header, rows


def detect_format(header: list[str], path) -> str:
    """``vindr``, ``cbis`` or ``generic`` from a CSV header; ValueError naming the file otherwise."""
    columns = set(header)
    if {"study_id", "image_id"} <= columns:
        return "vindr"
    if "image file path" in columns:
        return "cbis"
    if "path" in columns:
        return "generic"
    raise ValueError(
        f"cannot tell the layout of label CSV {path}: header {header} has none of "
        "study_id+image_id (VinDr-Mammo), 'image file path' (CBIS-DDSM) or path (generic)"
    )


def _label(attribute: str, value: str, ref: str) -> int | None:
    if value == "" or value.lower() in ("nan", "none_given", "unknown"):
        return None
    try:
        return attributes.encode_value(attribute, int(value) if value.isdigit() else value)
    except ValueError as e:
        raise ValueError(f"{ref}: {e}") from None


def _density_from_number(value: str, ref: str) -> int | None:
    """BI-RADS density 1..4 (CBIS-DDSM) -> A..D."""
    if value == "":
        return None
    if value not in ("1", "2", "3", "4"):
        raise ValueError(f"{ref}: breast density {value!r} is not 1..4")
    return int(value) - 1


def _vindr_findings(path: pathlib.Path) -> dict[str, int | None]:
    """image_id -> finding from VinDr-Mammo's ``finding_annotations.csv``."""
    findings: dict[str, int | None] = {}
    _, rows = _read_csv(path)
    for line, row in rows:
        text = row.get("finding_categories", "")
        try:
            categories = [str(c).lower() for c in ast.literal_eval(text)] if text.startswith("[") else [text.lower()]
        except (ValueError, SyntaxError):
            raise ValueError(f"{path.name}:{line}: finding_categories {text!r} is not a list") from None
        if any("mass" in c for c in categories):
            finding = 1
        elif any("calcification" in c for c in categories):
            finding = 2
        elif categories == ["no finding"]:
            finding = 0
        else:
            finding = None  # other findings (asymmetry, distortion...) are not in the label set
        current = findings.get(row["image_id"])
        if row["image_id"] not in findings or _FINDING_RANK[finding] > _FINDING_RANK[current]:
            findings[row["image_id"]] = finding
    return findings


def _resolve(dicom_dir: pathlib.Path, candidates: list[str]) -> str | None:
    """The first candidate path that exists under ``dicom_dir`` (relative, posix)."""
    for candidate in candidates:
        if (dicom_dir / candidate).is_file():
            return pathlib.PurePosixPath(candidate).as_posix()
    return None


def _cbis_candidates(dicom_dir: pathlib.Path, path: str) -> list[str]:
    """The CSV path, then the single .dcm under its top folder (NBIA download layout)."""
    path = path.replace("\\", "/").strip()
    top = path.split("/")[0]
    candidates = [path]
    if top and (dicom_dir / top).is_dir():
        found = sorted((dicom_dir / top).rglob("*.dcm"))
        if len(found) == 1:
            candidates.append(found[0].relative_to(dicom_dir).as_posix())
    return candidates


def _parse_rows(fmt: str, csv_path: pathlib.Path, rows, dicom_dir: pathlib.Path):
    """``(ImageRow | None, ref, candidates)`` per CSV row; None path means not found."""
    findings = {}
    if fmt == "vindr" and (csv_path.parent / "finding_annotations.csv").is_file():
        findings = _vindr_findings(csv_path.parent / "finding_annotations.csv")
    for line, row in rows:
        ref = f"{csv_path.name}:{line}"
        if fmt == "vindr":
            study, image = row["study_id"], row["image_id"]
            candidates = [f"{d}{study}/{image}{ext}" for d in ("images/", "") for ext in (".dicom", ".dcm")]
            density = row.get("breast_density", "").upper().replace("DENSITY", "").strip()
            if image in findings:
                finding = findings[image]
            else:
                finding = 0 if row.get("breast_birads", "").upper().replace("BI-RADS", "").strip() == "1" else None
            parsed = ImageRow(
                ref,
                "",
                study,
                _label("density", density, ref),
                finding,
                _label("view", row.get("view_position", ""), ref),
                _label("laterality", row.get("laterality", ""), ref),
            )
        elif fmt == "cbis":
            candidates = _cbis_candidates(dicom_dir, row["image file path"])
            density = row.get("breast_density", row.get("breast density", ""))
            side = row.get("left or right breast", "").upper()
            parsed = ImageRow(
                ref,
                "",
                row.get("patient_id") or None,
                _density_from_number(density, ref),
                _label("finding", row.get("abnormality type", ""), ref),
                _label("view", row.get("image view", ""), ref),
                _label("laterality", {"LEFT": "L", "RIGHT": "R"}.get(side, side), ref),
            )
        else:
            if not row["path"]:
                raise ValueError(f"{ref}: the path is empty")
            candidates = [row["path"]]
            parsed = ImageRow(
                ref,
                "",
                row.get("patient") or None,
                *(_label(a, row.get(a, ""), ref) for a in attributes.ATTRIBUTE_NAMES),
            )
        yield parsed, candidates


def read_label_csvs(paths, dicom_dir, csv_format: str = "auto") -> list[ImageRow]:
    """Parse label CSV(s) into one ``ImageRow`` per image (rows of one image merged).

    Raises ``FileNotFoundError`` naming the CSV lines whose DICOM file does not exist.
    """
    if csv_format not in CSV_FORMATS + ("auto",):
        raise ValueError(f"csv_format {csv_format!r} must be one of {CSV_FORMATS + ('auto',)}")
    dicom_dir = pathlib.Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_dir} does not exist")
    images: dict[str, ImageRow] = {}
    missing: list[str] = []
    for csv_path in [pathlib.Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]:
        header, rows = _read_csv(csv_path)
        fmt = detect_format(header, csv_path) if csv_format == "auto" else csv_format
        required = {"vindr": {"study_id", "image_id"}, "cbis": {"image file path"}, "generic": {"path"}}[fmt]
        if not required <= set(header):
            raise ValueError(
                f"label CSV {csv_path} lacks column(s) {sorted(required - set(header))} "
                f"of the {fmt} layout; header is {header}"
            )
        for parsed, candidates in _parse_rows(fmt, csv_path, rows, dicom_dir):
            path = _resolve(dicom_dir, candidates)
            if path is None:
                missing.append(parsed.ref)
                continue
            parsed.path = path
            if path in images:
                images[path].merge(parsed)
            else:
                images[path] = parsed
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{len(missing)} label CSV row(s) name DICOM files that do not exist under {dicom_dir}: {shown}"
        )
    if not images:
        raise ValueError(f"the label CSV(s) {paths} name no images")
    return list(images.values())


def split_of(patient_hash: str, fractions: tuple[float, float, float]) -> str:
    """The split of a patient from its salted hash: a uniform draw in [0, 1) against ``fractions``."""
    u = int(patient_hash[:12], 16) / 16**12
    edges = np.cumsum(fractions)
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


# ----------------------------------------------------------------------------- builder


def _process(path: str, size: int, frame: int | None, max_pixels: int):
    """Worker: a ``Mammogram`` or the failure reason (from ``dicom.REASONS``).

    Errors outside ``DicomError`` get the fixed "unexpected" reason: their messages may quote values.
    """
    try:
        return dicom.load_mammogram(path, size, frame=frame, max_pixels=max_pixels)
    except dicom.DicomError as e:
        return e.reason
    except Exception:  # one odd file must not end a long build; it counts as a failure
        return dicom.REASONS["unexpected"]


def failure_budget(max_fail_fraction: float, total: int) -> int:
    """How many of ``total`` images may fail: ``max_fail_fraction`` of them, counted exactly as
    the decimal number given (0.29 of 100 is 29, where floating point makes it 28.999...)."""
    return int(fractions.Fraction(repr(float(max_fail_fraction))) * total)


def check_build_options(
    max_fail_fraction: float,
    split_fractions,
    num_workers: int,
    frame: int | None = None,
    max_pixels: int = dicom.MAX_PIXELS,
):
    """ValueError naming a bad build option; returns the split fractions as 3 floats."""
    if not 0.0 <= max_fail_fraction <= 1.0:
        raise ValueError(f"max fail fraction {max_fail_fraction}: expected a fraction in [0, 1]")
    try:
        parts = split_fractions.split(",") if isinstance(split_fractions, str) else split_fractions
        split = tuple(float(f) for f in parts)
    except (TypeError, ValueError):
        split = ()
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions {split_fractions!r}: expected three non-negative numbers (train, validation, "
            "test) summing to 1, like 0.8,0.1,0.1"
        )
    if num_workers < 1:
        raise ValueError(f"workers {num_workers}: expected at least 1")
    if frame is not None and frame < 0:
        raise ValueError(f"frame {frame}: expected a frame index >= 0")
    if max_pixels < dicom.MIN_SIDE**2:
        raise ValueError(f"max pixels {max_pixels}: expected at least {dicom.MIN_SIDE**2} (the smallest image)")
    return split


class MammoDicomConfig(tfds.core.BuilderConfig):
    """A config per output resolution (``size`` x ``size`` pixels)."""

    def __init__(self, *, size: int, **kwargs):
        super().__init__(name=str(size), description=f"{size}x{size} 16-bit images", **kwargs)
        self.size = size


class MammoDicom(tfds.core.GeneratorBasedBuilder):
    """Mammograms from DICOM files and label CSVs (VinDr-Mammo, CBIS-DDSM, generic)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Breast segmentation (labels and film edges left out), breast_fraction feature.",
    }
    BUILDER_CONFIGS = [MammoDicomConfig(size=s) for s in (64, 128, 256, 512, 1024)]
    DEFAULT_CONFIG_NAME = "512"

    def __init__(
        self,
        *,
        dicom_dir=None,
        labels=None,
        csv_format: str = "auto",
        salt: bytes | None = None,
        max_fail_fraction: float = 0.05,
        split_fractions=(0.8, 0.1, 0.1),
        allow_missing_splits: bool = False,
        frame: int | None = None,
        max_pixels: int = dicom.MAX_PIXELS,
        num_workers: int = 1,
        progress: bool = False,
        **kwargs,
    ):
        """Build inputs (needed only to prepare; reading takes ``data_dir``/``config`` only).

        ``salt`` is the secret key of the patient/id hashes (kept out of the data set); the
        build fails when more than ``max_fail_fraction`` of the images are unusable, or when a
        split gets no image (unless ``allow_missing_splits``: it is then left out). ``frame``
        picks a frame of multi-frame files; ``max_pixels`` bounds the declared Rows x Columns.
        """
        self._fractions = check_build_options(max_fail_fraction, split_fractions, num_workers, frame, max_pixels)
        self._inputs = dict(dicom_dir=dicom_dir, labels=labels, csv_format=csv_format)
        self._salt = salt.encode() if isinstance(salt, str) else salt
        self._max_fail_fraction = max_fail_fraction
        self._allow_missing_splits = allow_missing_splits
        self._decode_options = (frame, max_pixels)
        self._num_workers = num_workers
        self._progress = progress
        self.report: dict = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        features = {
            "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint16, encoding_format="png"),
            **{name: tfds.features.ClassLabel(names=list(values)) for name, values in attributes.ATTRIBUTES.items()},
            "id": tfds.features.Text(),
            "patient": tfds.features.Text(),
            "breast_fraction": tfds.features.Scalar(dtype=np.float32),
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            description="DICOM mammograms with density, finding, view and laterality labels: 12-bit values "
            "in 16-bit PNGs, chest wall left, breast segmented, split by salted patient hash.",
            metadata=tfds.core.MetadataDict(max_value=dicom.MAX_VALUE, orientation="chest wall left"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if not (self._inputs["dicom_dir"] and self._inputs["labels"] and self._salt):
            raise BuildError(
                "mammo_dicom needs dicom_dir, labels and salt to build (see python -m ldm_jax.data.build --help)"
            )
        self.report = {"dataset": self.name, "config": self.builder_config.name, "skipped": [], "warnings": []}
        dicom_dir = pathlib.Path(self._inputs["dicom_dir"])
        rows = read_label_csvs(self._inputs["labels"], dicom_dir, self._inputs["csv_format"])
        self.report |= {"images_in_csv": len(rows), "max_fail_fraction": self._max_fail_fraction}
        self._failure_budget = failure_budget(self._max_fail_fraction, len(rows))
        by_split: dict[str, list] = {s: [] for s in SPLITS}
        from_tags = 0
        for row in rows:
            if row.patient is not None:
                patient = dicom.salted_hash(self._salt, row.patient)
            else:
                try:
                    patient = dicom.header_patient_hash(dicom_dir / row.path, self._salt)
                except dicom.DicomError as e:
                    self._fail(row, e.reason)
                    continue
                if patient is None:
                    self._fail(row, dicom.REASONS["no_patient"])
                    continue
                from_tags += 1
            by_split[split_of(patient, self._fractions)].append((row, patient))
        if from_tags:
            self.report["warnings"].append(
                f"{from_tags} image(s) have no patient in the label CSV: their DICOM PatientID is used, which "
                "CBIS-DDSM-like data sets set per image; add a patient column for patient-level splits"
            )
        self.report["written"] = {s: 0 for s in SPLITS}
        generators = {}
        for split, items in by_split.items():
            first = self._first_usable(split, items) if items else None
            if first is not None:
                generators[split] = self._generate_examples(split, items[first[0] :], first[1])
            elif items:
                self._unusable_split(split, len(items))
            elif self._fractions[SPLITS.index(split)] > 0:
                self.report["warnings"].append(f"split {split!r} left out: no patient was drawn into it")
        return generators

    def _unusable_split(self, split: str, count: int) -> None:
        """A split whose images all failed: a BuildError, or left out with a warning when allowed."""
        if not self._allow_missing_splits:
            raise BuildError(
                f"split {split!r} would be empty: all {count} of its images are unusable (see the build "
                "report; fix the inputs or pass --allow-missing-splits to leave the split out)"
            )
        self.report["warnings"].append(f"split {split!r} left out: all {count} of its images are unusable")

    def _first_usable(self, split: str, items) -> tuple[int, dicom.Mammogram] | None:
        """``(index, Mammogram)`` of the first usable image of a split (failures before it are
        recorded), None when there is none: TFDS needs every split it is given to hold one."""
        dicom_dir = pathlib.Path(self._inputs["dicom_dir"])
        for index, (row, _) in enumerate(items):
            result = _process(str(dicom_dir / row.path), self.builder_config.size, *self._decode_options)
            if not isinstance(result, str):
                return index, result
            self._fail(row, result)
        return None

    def _fail(self, row: ImageRow, reason: str) -> None:
        """Record a skipped image; stop the build once the failure budget is spent."""
        self.report["skipped"].append({"row": row.ref, "reason": reason})
        failed, total = len(self.report["skipped"]), self.report["images_in_csv"]
        if failed > self._failure_budget:
            reasons = collections.Counter(s["reason"] for s in self.report["skipped"])
            raise BuildError(
                f"{failed} of {total} images could not be used, more than max_fail_fraction="
                f"{self._max_fail_fraction}: {dict(reasons.most_common(5))}"
            )

    def _results(self, paths: list[str]):
        """``_process`` over ``paths`` in order; with workers, a bounded look-ahead of processes."""
        args = (self.builder_config.size, *self._decode_options)
        if self._num_workers == 1:
            yield from (_process(path, *args) for path in paths)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        pool = concurrent.futures.ProcessPoolExecutor(self._num_workers, mp_context=context)
        try:
            pending = collections.deque()
            for path in paths:
                pending.append(pool.submit(_process, path, *args))
                if len(pending) >= 4 * self._num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _generate_examples(self, split: str, items, first: dicom.Mammogram):
        """Examples of ``items``, whose first image is already processed (``first``)."""
        from tqdm.auto import tqdm

        dicom_dir = pathlib.Path(self._inputs["dicom_dir"])
        results = itertools.chain([first], self._results([str(dicom_dir / row.path) for row, _ in items[1:]]))
        for (row, patient), result in tqdm(
            zip(items, results),
            total=len(items),
            disable=not self._progress,
            desc=f"mammo_dicom/{self.builder_config.name} {split}",
            unit="image",
        ):
            if isinstance(result, str):
                self._fail(row, result)
                continue
            key = dicom.salted_hash(self._salt, "path:" + row.path)
            tags = {"view": result.view, "laterality": result.laterality}
            example = {
                "image": encode_png(result.image[..., None]),
                "id": key,
                "patient": patient,
                "breast_fraction": result.breast_fraction,
            }
            for name in attributes.ATTRIBUTE_NAMES:
                value = getattr(row, name)
                if value is None and tags.get(name) is not None:
                    value = attributes.encode_value(name, tags[name])
                example[name] = -1 if value is None else value
            self.report["written"][split] += 1
            yield key, example
