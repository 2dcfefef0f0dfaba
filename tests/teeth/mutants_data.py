"""Planted bugs in reading real mammograms (segmentation, refusals, the build, data faults, the DICOM output)
that the tests must catch (see run.py)."""

from run import Mutant

_SEGMENT = "tests/test_segment.py"
_CORPUS = "tests/test_dicom.py::test_malformed_corpus_ends_in_one_fixed_reason_each"
_BUILDER = "tests/test_builder_dicom.py"
_CLI = "tests/test_build_cli.py"
_DCIODVFY = "tests/test_sampling.py::test_dicom_output_passes_the_standards_validator"
_TRUNCATED = "tests/test_data_faults.py::test_a_truncated_shard_fails_on_open_with_the_counts"

MUTANTS = [
    Mutant(
        "segment_without_the_opening",
        "ldm_jax/data/segment.py",
        "    foreground = ndimage.binary_opening(foreground, structure)\n",
        "",
        (_SEGMENT,),
    ),
    Mutant(
        "labels_inside_the_box_survive",
        "ldm_jax/data/dicom.py",
        "breast = np.where(mask, image, 0.0)[top:bottom, left:right]",
        "breast = image[top:bottom, left:right]",
        (_SEGMENT,),
    ),
    Mutant(
        "pydicom_child_loggers_print",
        "ldm_jax/data/dicom.py",
        "    logger.setLevel(logging.CRITICAL + 1)\n",
        "    logger.disabled = True\n",
        (_CORPUS,),
    ),
    Mutant(
        "size_limit_after_decoding",
        "ldm_jax/data/dicom.py",
        "    if rows * columns > max_pixels:\n",
        "    if False:\n",
        (_CORPUS,),
    ),
    Mutant(
        "failure_budget_in_floats",
        "ldm_jax/data/builders/mammo_dicom.py",
        "return int(fractions.Fraction(repr(float(max_fail_fraction))) * total)",
        "return int(max_fail_fraction * total)",
        (_BUILDER,),
    ),
    Mutant(
        "disagreeing_rows_merged",
        "ldm_jax/data/builders/mammo_dicom.py",
        "            if mine is not None and theirs is not None and mine != theirs:\n",
        "            if False:\n",
        (_BUILDER,),
    ),
    Mutant(
        "empty_split_reaches_tfds",
        "ldm_jax/data/builders/mammo_dicom.py",
        "            elif items:\n                self._unusable_split(split, len(items))\n",
        "",
        (_CLI,),
    ),
    Mutant(
        "dicom_output_without_type_2",
        "ldm_jax/sampling/writers.py",
        '        setattr(ds, keyword, "")\n',
        "        pass\n",
        (_DCIODVFY,),
    ),
    Mutant(
        "shards_unchecked_on_open",
        "ldm_jax/data/pipeline.py",
        "    verify.check_shards(source)\n",
        "",
        (_TRUNCATED,),
    ),
]
