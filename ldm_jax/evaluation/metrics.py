"""Image-quality, distribution and memorization metrics for generated mammograms.

Reconstruction: PSNR, SSIM and MS-SSIM (``ldm_jax.perceptual.ssim``). Distributions, all on
feature vectors ``[N, D]`` (e.g. ``ldm_jax.evaluation.classifier`` embeddings):

* Fréchet distance between Gaussian fits (Heusel et al. 2017, "FID"),
* kernel inception distance: unbiased MMD² with a cubic polynomial kernel (Bińkowski et al. 2018),
* precision and recall of k-NN manifolds (Kynkäänniemi et al. 2019), on equal-size sets.

Memorization: nearest training item of each sample by feature distance and by MS-SSIM, and
the MS-SSIM diversity of a sample set (mean over random pairs; Odena et al. 2017).

Images are NHWC batches in the model range ``[-1, 1]`` unless a ``value_range`` says otherwise;
12-bit pixels map to it with ``ldm_jax.data.imageio.to_model_range``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.perceptual.ssim import ms_ssim, ssim

MODEL_RANGE = (-1.0, 1.0)


# ----------------------------------------------------------------------------- reconstruction


def _check_pair(x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"expected two batches [B, ...] of one shape, got {x.shape} and {y.shape}")
    return x, y


def psnr(x, y, max_value: float) -> np.ndarray:
    """Peak signal-to-noise ratio per example ``[B]`` (dB): ``10 log10(max_value² / MSE)``, computed
    in float64; ``inf`` where the images are identical. ``max_value`` is the width of the value
    range (2 for ``[-1, 1]``, 4095 for 12-bit pixels)."""
    x, y = _check_pair(x, y)
    if max_value <= 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=tuple(range(1, x.ndim)))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(max_value) ** 2 / mse)


def _to_unit(x, value_range):
    """Shift images of ``value_range = (low, high)`` to ``[0, high - low]`` (SSIM's luminance term
    is not shift invariant; it assumes black = 0). Returns the images and ``high - low``."""
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return jnp.asarray(x, jnp.float32) - low, float(high - low)


def reconstruction_metrics(x, y, value_range=MODEL_RANGE) -> dict[str, np.ndarray]:
    """PSNR, SSIM and MS-SSIM per example (``{"psnr", "ssim", "ms_ssim"}``, each ``[B]``) of two NHWC
    batches, e.g. inputs and autoencoder reconstructions."""
    x, y = _check_pair(x, y)
    xu, width = _to_unit(x, value_range)
    yu, _ = _to_unit(y, value_range)
    return {
        "psnr": psnr(x, y, width),
        "ssim": np.asarray(ssim(xu, yu, max_val=width)),
        "ms_ssim": np.asarray(ms_ssim(xu, yu, max_val=width)),
    }


def finite_mean(values) -> float:
    """The mean of the finite values (e.g. PSNR, infinite for identical images); inf if none is."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("inf")


# ----------------------------------------------------------------------------- Fréchet distance


def _features(feats, name, min_count=1) -> np.ndarray:
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix [N, D], got shape {feats.shape}")
    if len(feats) < min_count:
        raise ValueError(f"{name} needs at least {min_count} feature vectors, got {len(feats)}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"{name} contains non-finite values")
    return feats


def gaussian_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N ≥ 2."""
    feats = _features(feats, "features", min_count=2)
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein²) distance of two Gaussians (Dowson & Landau 1982; FID, Heusel et al. 2017):

        d² = |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}.

    ``tr (Σ1 Σ2)^{1/2} = Σ_i sqrt(λ_i)`` with λ the eigenvalues of the symmetric PSD matrix
    ``Σ1^{1/2} Σ2 Σ1^{1/2}`` (same spectrum as Σ1 Σ2), computed in float64 with ``eigh``: no
    complex parts or ill-conditioned ``sqrtm`` iterations.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"expected means [D] and covariances [D, D] of one D, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    eig = np.linalg.eigvalsh(root1 @ (0.5 * (sigma2 + sigma2.T)) @ root1)
    trace_sqrt = np.sum(np.sqrt(np.maximum(eig, 0.0)))
    value = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``[N, D]`` and ``[M, D]`` (FID when the
    features are Inception's; here usually the phantom classifier's)."""
    mu1, sigma1 = gaussian_statistics(feats_a)
    mu2, sigma2 = gaussian_statistics(feats_b)
    return frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)


# ----------------------------------------------------------------------------- KID


def polynomial_kernel(x, y) -> np.ndarray:
    """``k(x, y) = (x·y / d + 1)³`` for all pairs of rows: ``[N, M]`` (Bińkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) of two samples ``[m, D]``, ``[n, D]`` with the cubic
    polynomial kernel: mean of k over distinct pairs within x and within y, minus twice the mean
    over cross pairs."""
    x = _features(x, "x", min_count=2)
    y = _features(y, "y", min_count=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_inception_distance(
    feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and standard deviation of the unbiased MMD² over
    ``num_subsets`` random subsets of ``min(subset_size, N, M)`` items per set, drawn without
    replacement. Unbiased: its expectation is 0 when both sets come from one distribution, so
    small negative values occur.

    The standard deviation covers only the subset draws: a set of exactly that size enters
    every subset whole (reordered), so its own sampling noise is not in it. With
    ``evaluate.py``'s 128 samples and 256 held-out images (subsets of 128), it is the spread
    over which real images were drawn, for this one set of samples.
    """
    feats_a = _features(feats_a, "feats_a", min_count=2)
    feats_b = _features(feats_b, "feats_b", min_count=2)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature dimensions differ: {feats_a.shape[1]} and {feats_b.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    size = min(subset_size, len(feats_a), len(feats_b))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            feats_a[rng.choice(len(feats_a), size, replace=False)],
            feats_b[rng.choice(len(feats_b), size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------- k-NN geometry


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """``|a_i − b_j|²`` ``[len(a), len(b)]`` (float64, clipped at 0), given ``b_sq = |b_j|²``."""
    d2 = np.sum(a * a, axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _blocks(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def knn_radii(feats, k: int = 3, batch_size: int = 1024) -> np.ndarray:
    """Distance ``[N]`` from each feature vector to its k-th nearest neighbour in the same set (itself
    excluded), in row blocks of ``batch_size`` (memory ``batch_size × N``)."""
    feats = _features(feats, "features")
    if not 1 <= k < len(feats):
        raise ValueError(f"k must be in [1, {len(feats) - 1}] for {len(feats)} features, got {k}")
    sq = np.sum(feats * feats, axis=1)
    radii = np.empty(len(feats))
    for rows in _blocks(len(feats), batch_size):
        d2 = _squared_distances(feats[rows], feats, sq)
        # index 0 of the sorted row is the point itself (distance 0), so index k is the k-th neighbour
        radii[rows] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return radii


def _fraction_in_manifold(queries, support, radii, batch_size) -> float:
    """Fraction of ``queries`` inside at least one ball ``B(support_j, radii_j)``."""
    sq = np.sum(support * support, axis=1)
    inside = np.zeros(len(queries), bool)
    for rows in _blocks(len(queries), batch_size):
        inside[rows] = np.any(_squared_distances(queries[rows], support, sq) <= radii[None, :] ** 2, axis=1)
    return float(inside.mean())


def precision_recall(real_feats, fake_feats, k: int = 3, batch_size: int = 1024, seed: int = 0) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to the
    k-th nearest neighbour. Precision: fraction of generated samples inside the real manifold
    (fidelity); recall: fraction of real samples inside the generated manifold (coverage).

    The radii shrink as a set grows, so the two sets are compared at one size, as in the paper:
    the larger is subsampled without replacement (``seed``) to the smaller's size. Then, for two
    samples of one distribution, precision and recall are exchangeable (equal expectations).
    """
    real = _features(real_feats, "real_feats", min_count=k + 1)
    fake = _features(fake_feats, "fake_feats", min_count=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} and {fake.shape[1]}")
    size, rng = min(len(real), len(fake)), np.random.default_rng(seed)
    real, fake = (f if len(f) == size else f[rng.choice(len(f), size, replace=False)] for f in (real, fake))
    precision = _fraction_in_manifold(fake, real, knn_radii(real, k, batch_size), batch_size)
    recall = _fraction_in_manifold(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return {"precision": precision, "recall": recall}


# ----------------------------------------------------------------------------- memorization


def nearest_neighbours(queries, references, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query feature vector, the nearest reference by Euclidean distance: indices ``[Q]``
    (int64) and distances ``[Q]``, in query blocks of ``batch_size``."""
    queries = _features(queries, "queries")
    references = _features(references, "references")
    if queries.shape[1] != references.shape[1]:
        raise ValueError(f"feature dimensions differ: {queries.shape[1]} and {references.shape[1]}")
    sq = np.sum(references * references, axis=1)
    index = np.empty(len(queries), np.int64)
    distance = np.empty(len(queries))
    for rows in _blocks(len(queries), batch_size):
        d2 = _squared_distances(queries[rows], references, sq)
        index[rows] = np.argmin(d2, axis=1)
        distance[rows] = np.sqrt(d2[np.arange(len(d2)), index[rows]])
    return index, distance


_ms_ssim_jit = jax.jit(ms_ssim, static_argnames="max_val")


@functools.partial(jax.jit, static_argnames="max_val")
def _ms_ssim_table(queries, references, max_val):
    """MS-SSIM ``[Q, R]`` of every query against every reference (both NHWC, shifted to ``[0, max_val]``)."""
    q, r = queries.shape[0], references.shape[0]
    x = jnp.repeat(queries, r, axis=0)
    y = jnp.tile(references, (q, 1, 1, 1))
    return ms_ssim(x, y, max_val=max_val).reshape(q, r)


def pad_batch(x, n: int):
    """``x`` (NumPy or JAX) padded along axis 0 to ``n`` rows by repeating its first row, so that
    every batch a jitted function sees has one shape; the caller drops the padded rows."""
    if len(x) == n:
        return x
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.repeat(x[:1], n - len(x), axis=0)])


def _check_images(images, name):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty NHWC batch, got shape {images.shape}")
    return images


def nearest_by_ms_ssim(
    samples, references, value_range=MODEL_RANGE, query_batch: int = 8, reference_batch: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """For each sample image, the reference (training) image of highest MS-SSIM: indices ``[Q]`` and
    scores ``[Q]``. Scores all ``Q × R`` pairs in fixed-shape tiles of ``query_batch ×
    reference_batch`` pairs (one compilation; partial tiles are padded and the padding dropped);
    memory grows with ``query_batch · reference_batch · H · W``: lower them for large images."""
    samples = _check_images(samples, "samples")
    references = _check_images(references, "references")
    if samples.shape[1:] != references.shape[1:]:
        raise ValueError(f"image shapes differ: {samples.shape[1:]} and {references.shape[1:]}")
    samples, width = _to_unit(samples, value_range)
    references, _ = _to_unit(references, value_range)
    qb, rb = min(query_batch, len(samples)), min(reference_batch, len(references))
    best = np.full(len(samples), -np.inf)
    index = np.zeros(len(samples), np.int64)
    for qs in _blocks(len(samples), qb):
        q = pad_batch(samples[qs], qb)
        for rs in _blocks(len(references), rb):
            table = np.asarray(_ms_ssim_table(q, pad_batch(references[rs], rb), width))
            table = table[: qs.stop - qs.start, : rs.stop - rs.start]
            arg = np.argmax(table, axis=1)
            score = table[np.arange(len(table)), arg]
            better = score > best[qs]
            best[qs] = np.where(better, score, best[qs])
            index[qs] = np.where(better, arg + rs.start, index[qs])
    return index, best


def fraction_above(scores, threshold: float) -> float:
    """Fraction of ``scores`` strictly above ``threshold`` (e.g. samples whose nearest training image
    has MS-SSIM > 0.95: likely copies). For distances pass ``-distances`` and ``-threshold``."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        raise ValueError("scores is empty")
    return float(np.mean(scores > threshold))


def ms_ssim_diversity(
    images, num_pairs: int = 1000, seed: int = 0, value_range=MODEL_RANGE, batch_size: int = 128
) -> float:
    """Mean MS-SSIM over ``num_pairs`` random pairs of distinct images (Odena et al. 2017): lower is
    more diverse; compare with the same statistic of real images of the same condition."""
    images = _check_images(images, "images")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for pairwise MS-SSIM, got {len(images)}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), num_pairs)
    second = (first + rng.integers(1, len(images), num_pairs)) % len(images)  # uniform over j != i
    images, width = _to_unit(images, value_range)
    batch = min(batch_size, num_pairs)
    scores = []
    for rows in _blocks(num_pairs, batch):
        x, y = pad_batch(images[first[rows]], batch), pad_batch(images[second[rows]], batch)
        scores.append(np.asarray(_ms_ssim_jit(x, y, width))[: rows.stop - rows.start])
    return float(np.mean(np.concatenate(scores)))
