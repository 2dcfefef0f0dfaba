"""Sampling jobs: per-image determinism, shards, resume, writers, editing, bad input."""

import importlib.util
import io
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from micro import ROOT

from ldm_jax import attributes
from ldm_jax.data.imageio import encode_png
from ldm_jax.data.phantoms import generate_phantom
from ldm_jax.diffusion import samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.schedule import make_schedule
from ldm_jax.models.autoencoder import DiagonalGaussian
from ldm_jax.sampling import job, writers
from ldm_jax.sampling.conditions import Conditions
from ldm_jax.sampling.generate import image_keys, make_edit, source_features
from ldm_jax.sampling.model import load_model


def _load_sample_cli():
    spec = importlib.util.spec_from_file_location("sample_cli", ROOT / "sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


SAMPLE = _load_sample_cli()


# ----------------------------------------------------------------------------- conditions, shards


def _distribution(rows_counts):
    return np.asarray([[*row, count] for row, count in rows_counts], np.int64)


def test_fixed_and_listed_conditions():
    fixed = Conditions("density=D,finding=mass", None, seed=0)
    assert fixed.labels([0, 7]).tolist() == [[3, 1, 2, 2]] * 2
    listed = Conditions("density=A;density=D", None, seed=0)
    assert listed.labels([0, 1, 2, 5]).tolist() == [[0, 3, 2, 2], [3, 3, 2, 2], [0, 3, 2, 2], [3, 3, 2, 2]]
    assert Conditions("unconditional", None, 0).labels([3]).tolist() == [list(attributes.NUM_CLASSES)]


def test_random_conditions_follow_the_training_distribution_per_image():
    dist = _distribution([((0, 0, 0, 0), 600), ((3, 1, 1, 1), 300), ((2, 2, 0, 1), 100)])
    conditions = Conditions("random", dist, seed=5)
    labels = conditions.labels(np.arange(4000))
    # image i's draw does not depend on the other indices asked for with it
    assert conditions.labels([1234]).tolist() == [labels[1234].tolist()]
    assert Conditions("random", dist, seed=5).labels([7, 9]).tolist() == labels[[7, 9]].tolist()
    for row, p in (((0, 0, 0, 0), 0.6), ((3, 1, 1, 1), 0.3), ((2, 2, 0, 1), 0.1)):
        frequency = np.mean(np.all(labels == row, axis=1))
        assert abs(frequency - p) < 5 * np.sqrt(p * (1 - p) / len(labels))
    assert not np.array_equal(Conditions("random", dist, seed=6).labels(np.arange(50)), labels[:50])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("density=E", "unknown density value"),
        ("colour=red", "unknown attribute"),
        ("density", "attribute=value"),
        ("density=D", "never occurs"),
        ("random", None),
    ],
)
def test_bad_conditions_are_refused(spec, message):
    dist = _distribution([((0, 0, 0, 0), 10), ((1, 2, 1, 1), 5)])
    if message is None:
        with pytest.raises(ValueError, match="does not record"):
            Conditions(spec, None, 0)
        return
    with pytest.raises(ValueError, match=message):
        Conditions(spec, dist, 0)


def test_shards_partition_the_indices():
    blocks = [list(job.shard_indices(103, (k, 7))) for k in range(7)]
    assert sum(blocks, []) == list(range(103))
    assert job.parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            job.parse_shard(bad)


# ----------------------------------------------------------------------------- writers


@pytest.mark.parametrize("fmt, tolerance", [("png16", 1 / 4095), ("png8", 1 / 255), ("npz", 0.0), ("dicom", 1 / 4095)])
def test_writers_round_trip_and_are_deterministic(fmt, tolerance):
    image = np.random.default_rng(0).uniform(-1, 1, (16, 12, 1)).astype(np.float32)
    kwargs = dict(labels=np.array([1, 2, 0, 1]), description="density=B", job_uid="abc", index=3)
    data = writers.encode_image(image, fmt, **kwargs)
    assert data == writers.encode_image(image, fmt, **kwargs)
    back = writers.decode_image(data, fmt)
    assert back.shape == (16, 12)
    assert np.max(np.abs(back - image[..., 0])) <= tolerance + 1e-6


def test_dicom_output_is_marked_synthetic_and_has_no_patient_fields():
    import pydicom

    image = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    data = writers.encode_image(image, "dicom", labels=np.zeros(4), description="density=A", job_uid="j", index=0)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.ConversionType == "SYN" and ds.SeriesDescription == "SYNTHETIC"
    assert "SYNTHETIC" in ds.ImageComments and "density=A" in ds.ImageComments
    patient = {e.keyword: e.value for e in ds.iterall() if e.tag.group == 0x0010}
    assert set(patient) == {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}  # Type 2: present
    assert all(value in ("", None) for value in patient.values())  # and empty
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        assert ds[keyword].value in ("", None)
    for keyword in ("InstitutionName", "ContentDate", "PatientAge", "OtherPatientIDs"):
        assert keyword not in ds
    assert ds.Laterality == "L" and ds.PatientOrientation in ("", None)  # labels np.zeros(4): laterality L
    assert ds.pixel_array.max() == 4095 and ds.BitsStored == 12
    other = writers.encode_image(image, "dicom", labels=np.zeros(4), description="", job_uid="j", index=1)
    assert pydicom.dcmread(io.BytesIO(other)).SOPInstanceUID != ds.SOPInstanceUID


@pytest.mark.parametrize("laterality", ["R", None])
def test_dicom_output_passes_the_standards_validator(tmp_path, laterality):
    """``dciodvfy`` (Debian package dicom3tools; .ci/run installs it) finds no error in the
    output, with the laterality label given (R) and not given (null)."""
    import shutil
    import subprocess

    import pydicom

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools (apt-get install -y dicom3tools)")
    labels = attributes.parse_condition(f"laterality={laterality}" if laterality else "density=B")
    image = np.linspace(-1, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    path = tmp_path / "out.dcm"
    path.write_bytes(writers.encode_image(image, "dicom", labels=labels, description="x", job_uid="j", index=0))
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert "SCImage" in lines  # it validated the file as a Secondary Capture image
    assert [line for line in lines if line.startswith("Error")] == []
    assert pydicom.dcmread(path).Laterality == (laterality or "")


# ----------------------------------------------------------------------------- per-example noise


def test_batched_keys_give_each_example_its_own_noise():
    keys = image_keys(jax.random.PRNGKey(0), jnp.arange(6))
    together = samplers.standard_normal(keys, 3, (6, 4, 4, 1))
    alone = samplers.standard_normal(keys[2:3], 3, (1, 4, 4, 1))
    np.testing.assert_array_equal(together[2:3], alone)
    assert not np.allclose(together[0], together[1])


# ----------------------------------------------------------------------------- editing, exact model


class _IdentityAutoencoder(nn.Module):
    """Latent = image: isolates the diffusion part of editing."""

    def encode(self, x):
        return DiagonalGaussian(x, jnp.zeros_like(x))

    def decode(self, z):
        return z

    def __call__(self, x):
        return x


class _BlockMeanAutoencoder(nn.Module):
    """Latent = the image's 2×2 block means, decoded as constant blocks: an autoencoder that loses
    every detail finer than its latent grid, and is linear."""

    def encode(self, x):
        b, h, w, c = x.shape
        z = x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
        return DiagonalGaussian(z, jnp.zeros_like(z))

    def decode(self, z):
        return jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)

    def __call__(self, x):
        return self.decode(self.encode(x).mode())


MEANS = np.array([-0.5, -0.2, 0.2, 0.5], np.float32)  # density A..D: mean intensity
STD = 0.1


class _ExactGaussianUNet(nn.Module):
    """E[ε | x_t, density] when x_0 ~ N(MEANS[density], STD²) per pixel: σ(x_t − a μ)/(a² s² + σ²)."""

    alphas_cumprod: tuple

    def __call__(self, x, t, labels):
        abar = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
        mu = jnp.asarray(MEANS)[labels[:, 0]][:, None, None, None]
        a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        return sigma * (x - a * mu) / (abar * STD**2 + sigma**2)


def _toy_edit(
    method,
    strength,
    images,
    source,
    target,
    num_steps=50,
    unet_class=None,
    guidance=1.0,
    guide="all",
    autoencoder=None,
    detail=False,
):
    schedule = make_schedule("linear", 1000)
    unet = (unet_class or _ExactGaussianUNet)(tuple(np.asarray(schedule.alphas_cumprod).tolist()))
    sampling = SamplerConfig(num_steps=num_steps, guidance_scale=guidance)
    autoencoder = autoencoder or _IdentityAutoencoder()
    edit = jax.jit(
        make_edit(unet, autoencoder, schedule, sampling, method=method, strength=strength, guide=guide, detail=detail)
    )
    b = images.shape[0]
    labels = (np.tile(attributes.parse_condition(source), (b, 1)), np.tile(attributes.parse_condition(target), (b, 1)))
    return np.asarray(edit({}, {}, 1.0, images, *labels, image_keys(jax.random.PRNGKey(0), jnp.arange(b))))


def _density_d_images(n=4):
    return (MEANS[3] + STD * np.random.default_rng(1).standard_normal((n, 8, 8, 1))).astype(np.float32)


def test_edit_strength_zero_is_the_autoencoder_round_trip():
    x = _density_d_images()
    np.testing.assert_array_equal(_toy_edit("sdedit", 0.0, x, "density=D", "density=A"), np.clip(x, -1, 1))


def test_ddim_inversion_edit_moves_density_as_the_exact_transport():
    """Under the probability-flow ODE, N(μ_D, s²) → x_T → N(μ_A, s²) is x ↦ x − μ_D + μ_A."""
    x = _density_d_images()
    target = x - MEANS[3] + MEANS[0]
    edited = _toy_edit("ddim-inversion", 1.0, x, "density=D", "density=A", num_steps=1000)
    np.testing.assert_allclose(edited, target, atol=0.01)
    same = _toy_edit("ddim-inversion", 1.0, x, "density=D", "density=D", num_steps=1000)
    np.testing.assert_allclose(same, x, atol=0.01)
    # DDIM inversion is first order: with 100 steps the spread around the mean shrinks (to ~0.8
    # for this narrow class, s = 0.1), but the density (mean intensity) lands where it should.
    coarse = _toy_edit("ddim-inversion", 1.0, x, "density=D", "density=A", num_steps=100)
    assert abs(coarse.mean() - target.mean()) < 0.01
    assert np.abs(coarse - target).max() > np.abs(edited - target).max()


def test_an_edit_with_its_detail_kept_moves_density_and_keeps_what_the_autoencoder_loses():
    """Through an autoencoder that keeps only 2×2 block means, exact DDIM inversion D → A shifts the
    latent by μ_A − μ_D (the flow is affine), so the plain edit returns the block means shifted and
    loses the finer detail, while x + D(ẑ) − D(E(x)) is x − μ_D + μ_A: the same density change
    with every pixel's detail. At strength 0 the detail-kept edit returns x (to float round-off)."""
    x = _density_d_images()
    target = x - MEANS[3] + MEANS[0]
    blocks = _BlockMeanAutoencoder()
    plain = _toy_edit("ddim-inversion", 1.0, x, "density=D", "density=A", num_steps=1000, autoencoder=blocks)
    kept = _toy_edit(
        "ddim-inversion", 1.0, x, "density=D", "density=A", num_steps=1000, autoencoder=blocks, detail=True
    )
    np.testing.assert_allclose(kept, target, atol=0.01)
    np.testing.assert_allclose(plain, np.asarray(blocks.apply({}, target)), atol=0.01)
    assert np.abs(plain - target).max() > 0.1  # the detail the block means lose
    unchanged = _toy_edit("sdedit", 0.0, x, "density=D", "density=A", autoencoder=blocks, detail=True)
    np.testing.assert_allclose(unchanged, np.clip(x, -1, 1), atol=1e-6)


def test_sdedit_at_full_strength_samples_the_target_class():
    x = _density_d_images(64)
    edited = _toy_edit("sdedit", 1.0, x, "density=D", "density=A", num_steps=1000)
    assert abs(edited.mean() - MEANS[0]) < 0.01
    assert abs(edited.std() - STD) < 0.01
    partial = _toy_edit("sdedit", 0.3, x, "density=D", "density=A")
    assert MEANS[0] < partial.mean() < MEANS[3] - 0.05  # part of the way


class _ExactDensityViewUNet(nn.Module):
    """E[ε | x_t, labels] for x_0 ~ N(DENSITY_MEAN[density] + VIEW_SHIFT[view], STD²) per pixel (last
    entries: the null labels). Linear in x_t, so guided sampling with scale g draws exactly from
    N(μ_u + g (μ_c − μ_u), STD²)."""

    alphas_cumprod: tuple

    def __call__(self, x, t, labels):
        abar = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
        mu = jnp.asarray([-0.2, -0.1, 0.1, 0.2, 0.0])[labels[:, 0]] + jnp.asarray([0.1, -0.1, 0.0])[labels[:, 2]]
        a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        return sigma * (x - a * mu[:, None, None, None]) / (abar * STD**2 + sigma**2)


def test_density_only_guidance_holds_the_other_attributes_on_both_sides():
    """Guidance 2 towards density A, view CC: with the all-null unconditional branch the view's
    shift is amplified too, μ = 0 + 2 (−0.2 + 0.1) = −0.2; with only the density nulled it is
    not, μ = 0.1 + 2 (−0.2) = −0.3."""
    x = _density_d_images(16)
    kw = dict(num_steps=1000, unet_class=_ExactDensityViewUNet, guidance=2.0)
    both = _toy_edit("sdedit", 1.0, x, "density=D,view=CC", "density=A,view=CC", guide="all", **kw)
    density = _toy_edit("sdedit", 1.0, x, "density=D,view=CC", "density=A,view=CC", guide="density", **kw)
    assert abs(both.mean() - (-0.2)) < 0.01 and abs(density.mean() - (-0.3)) < 0.01, (both.mean(), density.mean())
    assert abs(density.std() - STD) < 0.01


class _ExactNegatingFilterUNet(nn.Module):
    """E[ε | x_t, source] for x_0 | source ~ N(−source, STD²) per pixel: a "filter" that negates
    (shifted by +0.3 when told finding=mass, which the filter must never be told). ``extra`` is
    ``source_features``: the source's latent, then its pixels (here the same); no pixel stem."""

    alphas_cumprod: tuple
    pixel_stem: int = 0

    def __call__(self, x, t, labels, extra, extra_pixels=None):
        abar = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
        a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        mu = 0.3 * (labels[:, 1] == 1)[:, None, None, None] - extra[..., : x.shape[-1]]
        return sigma * (x - a * mu) / (abar * STD**2 + sigma**2)


class _PoolingAutoencoder(nn.Module):
    """Latent = the mean of each 2×2 block, doubled (f = 2, one channel)."""

    def encode(self, x):
        b, h, w, c = x.shape
        mean = 2.0 * x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
        return DiagonalGaussian(mean, jnp.zeros_like(mean))


def test_source_features_are_the_scaled_latent_and_every_pixel_on_the_latent_grid():
    """Channel 0: scale · mode(E(x)); channel 1 + 2·di + dj at latent (i, j): pixel (2i + di, 2j + dj)."""
    x = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6, 1)
    features = np.asarray(source_features(_PoolingAutoencoder(), {}, jnp.asarray(x), 0.5))
    assert features.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(features[..., 0], x[..., 0].reshape(2, 2, 2, 3, 2).mean((2, 4)))
    for di in range(2):
        for dj in range(2):
            np.testing.assert_array_equal(features[..., 1 + 2 * di + dj], x[:, di::2, dj::2, 0])


def test_counterfactual_edit_samples_the_source_conditional_target():
    """The counterfactual method feeds the source to the UNet at every step: at full strength the
    edit draws from p(x_0 | source) = N(−source, STD²), with the finding never passed on; at
    strength 0.3 it starts from the noised source and lands between."""
    x = _density_d_images(16)
    kw = dict(unet_class=_ExactNegatingFilterUNet)
    full = _toy_edit("counterfactual", 1.0, x, "density=D", "density=D", num_steps=1000, **kw)
    assert abs((full + x).mean()) < 0.01 and abs((full + x).std() - STD) < 0.01
    told = _toy_edit("counterfactual", 1.0, x, "density=D,finding=mass", "density=D", num_steps=1000, **kw)
    np.testing.assert_array_equal(told, full)  # the finding is not passed on
    partial = _toy_edit("counterfactual", 0.3, x, "density=D", "density=D", **kw)
    assert -x.mean() < partial.mean() < x.mean() - 0.05


class _ExactLeftHalfDensityUNet(nn.Module):
    """E[ε | x_t, density] for x_0 ~ N(μ, STD²) per pixel with μ = MEANS[density] in the left half
    of the image (columns < 4) and 0 in the right half, whatever the density."""

    alphas_cumprod: tuple

    def __call__(self, x, t, labels):
        abar = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
        left = (jnp.arange(x.shape[2]) < x.shape[2] // 2)[None, None, :, None]
        mu = jnp.where(left, jnp.asarray(MEANS)[labels[:, 0]][:, None, None, None], 0.0)
        a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
        return sigma * (x - a * mu) / (abar * STD**2 + sigma**2)


def test_diffedit_moves_only_where_the_condition_acts_and_keeps_the_rest_exactly():
    """Density acts on the left half only: DiffEdit's mask is that half, which the exact transport
    x ↦ x − μ_D + μ_A moves as ddim-inversion would, while the right half comes back bit for bit
    (every step there takes the inversion's own latent, and the last one is z_0)."""
    rng = np.random.default_rng(2)
    x = (STD * rng.standard_normal((4, 8, 8, 1))).astype(np.float32)
    x[:, :, :4] += MEANS[3]
    kw = dict(num_steps=1000, unet_class=_ExactLeftHalfDensityUNet)
    edited = _toy_edit("diffedit", 1.0, x, "density=D", "density=A", **kw)
    np.testing.assert_allclose(edited[:, :, :4], x[:, :, :4] - MEANS[3] + MEANS[0], atol=0.01)
    np.testing.assert_array_equal(edited[:, :, 4:], x[:, :, 4:])
    inverted = _toy_edit("ddim-inversion", 1.0, x, "density=D", "density=A", **kw)
    np.testing.assert_allclose(edited[:, :, :4], inverted[:, :, :4], atol=1e-3)


def test_ddim_inversion_needs_the_ddim_sampler():
    schedule = make_schedule("linear", 100)
    for method in ("ddim-inversion", "diffedit"):
        with pytest.raises(ValueError, match="ddim sampler"):
            make_edit(None, None, schedule, SamplerConfig(sampler="ddpm"), method=method)
    with pytest.raises(ValueError, match="unknown edit method"):
        make_edit(None, None, schedule, method="blur")
    with pytest.raises(ValueError, match="unknown guide"):
        make_edit(None, None, schedule, guide="finding")


def test_sample_cli_offers_every_registered_sampler():
    """``--sampler`` takes the registry's names (aliases included); --eta only where the step uses η."""
    parser = SAMPLE.parser()
    base = ["--workdir", "w", "--out", "o", "--num", "1"]
    for name in samplers.SAMPLERS:
        assert parser.parse([*base, "--sampler", name])[0].sampler == name
    assert parser.parse([*base, "--sampler", "ddim", "--eta", "0.5"])[0].eta == 0.5
    with pytest.raises(ValueError, match="--eta does not apply"):
        parser.parse([*base, "--sampler", "dpmpp", "--eta", "0.5"])


# ----------------------------------------------------------------------------- the CLI on a trained micro model


@pytest.fixture(scope="module")
def trained(trained_micro):
    return trained_micro


def _sample(workdir, out, *extra):
    args = ["--workdir", str(workdir), "--out", str(out), "--steps", "3", "--no-progress", *extra]
    return SAMPLE.main(args)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


GEN = ("--num", "10", "--batch", "8", "--condition", "density=A;density=D", "--guidance", "2")


def test_run_saved_before_the_architecture_sections_still_loads(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "diffusion" / "checkpoints", tmp_path / "diffusion" / "checkpoints")
    for path in (tmp_path / "diffusion" / "checkpoints").glob("*/meta/metadata"):
        meta = json.loads(path.read_text())  # as written before: the networks named only by model
        for section in ("unet", "autoencoder_net", "discriminator_net"):
            del meta["config"][section]
        del meta["config"]["data"]["resize"]
        meta["config"]["data"]["image_size"] = 0
        path.write_text(json.dumps(meta))
        (path.parents[1] / "manifest.sha256.json").unlink()  # written before manifests, too
    old, new = load_model(tmp_path), load_model(trained)
    assert old.config.to_dict() == new.config.to_dict() and old.unet == new.unet
    assert old.image_size == 64 and old.latent_shape == (16, 16, 4)
    for a, b in zip(jax.tree.leaves(old.unet_params), jax.tree.leaves(new.unet_params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_shards_and_resume_reproduce_the_unsharded_job(trained, tmp_path, monkeypatch):
    assert _sample(trained, tmp_path / "whole", *GEN) == 0
    whole = _files(tmp_path / "whole")
    assert sorted(whole) == [f"{i:06d}.png" for i in range(10)] + [
        "contact_sheet.png",
        "manifest.jsonl",
        "settings.json",
    ]
    for k in (1, 0):
        assert _sample(trained, tmp_path / "sharded", *GEN, "--shard", f"{k}/2") == 0
    assert _files(tmp_path / "sharded") == whole

    writes = []
    real_write = job._write

    def dying_write(task, index, image):
        if len(writes) == 3:
            raise KeyboardInterrupt  # the job is killed mid-way
        writes.append(index)
        real_write(task, index, image)

    monkeypatch.setattr(job, "_write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _sample(trained, tmp_path / "resumed", *GEN)
    monkeypatch.setattr(job, "_write", real_write)
    partial = _files(tmp_path / "resumed")
    present = sorted(n for n in partial if n.endswith(".png") and n[0].isdigit())
    assert 0 < len(present) < 10
    # the restart writes only the missing images: existing files keep their inode and mtime
    stamps = {n: ((st := (tmp_path / "resumed" / n).stat()).st_ino, st.st_mtime_ns) for n in present}
    restart_writes = []

    def counting_write(task, index, image):
        restart_writes.append(index)
        real_write(task, index, image)

    monkeypatch.setattr(job, "_write", counting_write)
    assert _sample(trained, tmp_path / "resumed", *GEN) == 0
    monkeypatch.setattr(job, "_write", real_write)
    assert sorted(restart_writes) == [i for i in range(10) if f"{i:06d}.png" not in present]
    assert {n: ((st := (tmp_path / "resumed" / n).stat()).st_ino, st.st_mtime_ns) for n in present} == stamps
    assert _files(tmp_path / "resumed") == whole

    manifest = [json.loads(line) for line in whole["manifest.jsonl"].decode().splitlines()]
    assert [m["index"] for m in manifest] == list(range(10))
    assert manifest[1] == {
        "file": "000001.png",
        "index": 1,
        "seed": 0,
        "sampler": "ddim",
        "steps": 3,
        "guidance": 2.0,
        "checkpoint_step": 4,
        "ema": True,
        "condition": "density=D",
    }


@pytest.mark.slow
def test_batch_size_does_not_change_the_images(trained, tmp_path):
    assert _sample(trained, tmp_path / "b8", *GEN) == 0
    assert _sample(trained, tmp_path / "b16", *GEN[:2], "--batch", "16", *GEN[4:]) == 0
    for i in range(10):
        a, b = (writers.decode_image((tmp_path / d / f"{i:06d}.png").read_bytes(), "png16") for d in ("b8", "b16"))
        assert np.max(np.abs(a - b)) <= 2 / 4095  # equal up to float rounding in a differently tiled program


@pytest.mark.slow
def test_dicom_job_and_settings_guard(trained, tmp_path):
    import pydicom

    assert (
        _sample(
            trained, tmp_path / "dcm", "--num", "3", "--batch", "8", "--format", "dicom", "--condition", "density=C"
        )
        == 0
    )
    ds = pydicom.dcmread(tmp_path / "dcm" / "000002.dcm")
    assert ds.ConversionType == "SYN" and "density=C" in ds.ImageComments
    assert ds.pixel_array.shape == (64, 64)
    # the same folder with other settings is refused, nothing is written
    before = _files(tmp_path / "dcm")
    assert (
        _sample(
            trained, tmp_path / "dcm", "--num", "3", "--batch", "8", "--format", "dicom", "--condition", "density=A"
        )
        == 2
    )
    assert _files(tmp_path / "dcm") == before


@pytest.mark.slow
def test_counterfactual_edit_runs_the_trained_filter(trained_filter, tmp_path):
    """sample.py --edit-method counterfactual loads the counterfactual stage's UNet and gives what
    make_edit gives with it; the output is recorded as density A."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    phantoms = [generate_phantom(s, 64, density="D", finding="mass") for s in range(2)]
    for s, p in enumerate(phantoms):
        (inputs / f"scan{s}.png").write_bytes(encode_png(p.image))
    args = ["--edit-input", str(inputs), "--edit-method", "counterfactual", "--edit-strength", "1"]
    assert _sample(trained_filter, tmp_path / "edit", *args, "--batch", "8", "--format", "npz", "--seed", "5") == 0
    model = load_model(trained_filter, stage="counterfactual")
    assert model.stage == "counterfactual" and model.step == 4
    assert model.unet.model_channels == 32 and load_model(trained_filter).unet.model_channels == 16  # its own UNet
    sampling = SamplerConfig(num_steps=3, prediction=model.prediction, guidance_scale=3.0)
    edit = jax.jit(
        make_edit(model.unet, model.autoencoder, model.schedule, sampling, method="counterfactual", strength=1)
    )
    x = np.stack([p.image for p in phantoms]).astype(np.float32)[..., None] / 4095 * 2 - 1
    null = attributes.null_labels(2)
    expected = edit(
        model.unet_params, model.ae_params, model.scale, x, null, null, image_keys(jax.random.PRNGKey(5), jnp.arange(2))
    )
    for i in range(2):
        got = writers.decode_image((tmp_path / "edit" / f"{i:06d}.npz").read_bytes(), "npz")
        np.testing.assert_allclose(got, np.asarray(expected)[i, ..., 0], atol=2e-3)
    record = json.loads((tmp_path / "edit" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["method"] == "counterfactual" and record["condition"] == "density=A"


def test_edit_at_strength_zero_writes_the_reconstruction(trained, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    phantoms = [generate_phantom(s, 64, density="D") for s in range(3)]
    for s, p in enumerate(phantoms):
        (inputs / f"scan{s}.png").write_bytes(encode_png(p.image))
    assert (
        _sample(
            trained,
            tmp_path / "edit",
            "--edit-input",
            str(inputs),
            "--edit-to",
            "density=A",
            "--edit-strength",
            "0",
            "--batch",
            "8",
            "--format",
            "npz",
        )
        == 0
    )
    model = load_model(trained)
    x = np.stack([p.image for p in phantoms]).astype(np.float32)[..., None] / 4095 * 2 - 1
    ae = model.autoencoder
    z = ae.apply({"params": model.ae_params}, x, method=ae.encode).mode()
    expected = np.clip(ae.apply({"params": model.ae_params}, z, method=ae.decode), -1, 1)[..., 0]
    for i in range(3):
        got = writers.decode_image((tmp_path / "edit" / f"{i:06d}.npz").read_bytes(), "npz")
        # Round-off only: sample.py encodes and decodes a padded batch of 8 over 8 devices;
        # measured 2.2e-4 at most on the micro model, against a mean |input − reconstruction| of 0.89.
        np.testing.assert_allclose(got, expected[i], atol=1e-3)
    record = json.loads((tmp_path / "edit" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["condition"] == "density=A" and record["method"] == "sdedit" and len(record["source_sha256"]) == 64
    assert "scan0" not in (tmp_path / "edit" / "manifest.jsonl").read_text()
    # with its detail kept, an edit that changes nothing gives back the input itself
    args = ["--edit-input", str(inputs), "--edit-to", "density=A", "--edit-strength", "0", "--edit-keep-detail"]
    assert _sample(trained, tmp_path / "kept", *args, "--batch", "8", "--format", "npz") == 0
    for i in range(3):
        got = writers.decode_image((tmp_path / "kept" / f"{i:06d}.npz").read_bytes(), "npz")
        np.testing.assert_allclose(got, np.clip(x[i, ..., 0], -1, 1), atol=1e-3)
    assert json.loads((tmp_path / "kept" / "manifest.jsonl").read_text().splitlines()[0])["keep_detail"] is True


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown value", "no checkpoint", "shard", "edit input", "no num"])
def test_bad_input_exits_with_a_clear_error(trained, tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "unknown value":
        code = _sample(trained, out, "--num", "2", "--condition", "density=E")
        expected = "unknown density value"
    elif case == "no checkpoint":
        code = _sample(tmp_path, out, "--num", "2")
        expected = "no diffusion checkpoints"
    elif case == "shard":
        code = _sample(trained, out, "--num", "2", "--shard", "2/2")
        expected = "out of range"
    elif case == "edit input":
        bad = tmp_path / "bad.png"
        bad.write_text("not an image")
        code = _sample(trained, out, "--edit-input", str(bad), "--edit-to", "density=A", "--batch", "8")
        expected = "neither a PNG nor a DICOM"
    else:
        code, expected = _sample(trained, out), "give --num"
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not list(out.glob("*.png"))  # no image was written
