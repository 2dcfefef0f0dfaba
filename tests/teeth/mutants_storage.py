"""Planted bugs in checkpoint verification, storage-fault reporting and the compilation cache."""

from run import Mutant

MUTANTS = [
    Mutant(
        "checkpoint_manifest_never_checked",
        "ldm_jax/checkpoint/manifest.py",
        "    if not has_manifest(step_dir):\n        return None\n",
        "    return None\n",
        (
            "tests/test_storage_faults.py::test_a_corrupt_newest_checkpoint_is_named_moved_aside_and_the_one_before_restored",
        ),
    ),
    Mutant(
        "full_disk_raised_as_it_comes",
        "ldm_jax/checkpoint/checkpointer.py",
        "            if not out_of_space(error):\n                raise\n",
        "            raise\n",
        ("tests/test_storage_faults.py::test_a_full_disk_while_saving_is_one_line_that_names_the_intact_checkpoints",),
    ),
    Mutant(
        "compilation_cache_never_used",
        "ldm_jax/cli.py",
        "        if compilation_cache:\n            use_compilation_cache()\n",
        "",
        (
            "tests/test_compilation_cache.py::test_a_second_sampling_job_loads_every_program_from_the_cache_and_writes_the_same_images",
        ),
    ),
]
