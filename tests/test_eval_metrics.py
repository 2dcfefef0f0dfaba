import numpy as np
import pytest
import scipy.linalg

from ldm_jax.data import lesion_pairs
from ldm_jax.data.imageio import to_model_range
from ldm_jax.data.phantoms import generate_phantom
from ldm_jax.evaluation import lesions, metrics
from ldm_jax.perceptual.ssim import ms_ssim


def test_psnr_ssim_identical_and_hand_computed():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 32, 32, 1)).astype(np.float32)
    out = metrics.reconstruction_metrics(x, x)
    assert np.all(np.isinf(out["psnr"]))
    np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-5)
    np.testing.assert_allclose(out["ms_ssim"], 1.0, atol=1e-5)

    y = x.copy()
    y[0, 0, 0, 0] += 0.5  # one pixel off by 0.5; the second image identical
    want = 10 * np.log10(2.0**2 / (0.5**2 / (32 * 32)))
    got = metrics.psnr(x, y, max_value=2.0)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    assert np.isinf(got[1])
    # 12-bit pixels: a constant error of 40.95 levels is 1% of the range -> 40 dB
    a = np.full((1, 8, 8), 1000, np.uint16)
    np.testing.assert_allclose(metrics.psnr(a, a + 40.95, 4095), 40.0, rtol=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(x, x[:1], 2.0)


def test_to_model_range():
    np.testing.assert_allclose(to_model_range(np.array([0, 4095], np.uint16)), [-1.0, 1.0])


def _scipy_frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    np.testing.assert_allclose(metrics.frechet_distance(a, b), _scipy_frechet(a, b), rtol=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)


def test_frechet_closed_form_diagonal():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # diagonal: sum (s1 - s2)^2
    got = metrics.frechet_distance_from_statistics(mu1, np.diag(v1), mu2, np.diag(v2))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a singular covariance is fine (eigenvalues clipped at 0)
    assert metrics.frechet_distance_from_statistics(
        mu1, np.diag([1.0, 0.0, 0.0]), mu1, np.zeros((3, 3))
    ) == pytest.approx(1.0)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        metrics.frechet_distance(np.zeros(5), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="one D"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_mmd2_matches_direct_double_sum():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 5)), rng.normal(1.0, 1.0, size=(9, 5))

    def k(a, b):
        return (a @ b / 5 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    np.testing.assert_allclose(metrics.mmd2_unbiased(x, y), xx + yy - 2 * xy, rtol=1e-12)


def test_kid_unbiased_and_positive_for_different_distributions():
    rng = np.random.default_rng(3)
    values = [metrics.mmd2_unbiased(rng.normal(size=(30, 8)), rng.normal(size=(30, 8))) for _ in range(400)]
    mean, standard_error = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean) < 3 * standard_error
    same = metrics.kernel_inception_distance(
        rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), num_subsets=20, subset_size=100
    )
    shifted = metrics.kernel_inception_distance(
        rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8)), num_subsets=20, subset_size=100
    )
    assert shifted[0] > 10 * max(same[0], same[1] / np.sqrt(20))
    assert shifted[0] > 0 and shifted[1] > 0


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(500, 6))
    out = metrics.precision_recall(a, a, batch_size=64)
    assert out == {"precision": 1.0, "recall": 1.0}
    far = metrics.precision_recall(a, rng.normal(size=(400, 6)) + 20.0, batch_size=64)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # two real modes, the generator covers one: high precision, recall at most one half
    two_modes = np.concatenate([a[:250], a[250:] + 20.0])
    out = metrics.precision_recall(two_modes, rng.normal(size=(300, 6)))
    assert out["precision"] > 0.85 and 0.35 < out["recall"] <= 0.5


def test_precision_recall_compare_equal_sizes():
    """Two samples of one distribution at one size are exchangeable, so E[precision] = E[recall].
    At 1024 real against 32 generated, without subsampling precision exceeds recall by 0.09 on
    average here (k-NN radii from sets of unequal size); with it the gap is 0 within its error."""
    rng = np.random.default_rng(8)
    gaps = []
    for _ in range(100):
        out = metrics.precision_recall(rng.standard_t(3, size=(1024, 8)), rng.standard_t(3, size=(32, 8)))
        gaps.append(out["precision"] - out["recall"])
    standard_error = np.std(gaps) / np.sqrt(len(gaps))
    assert abs(np.mean(gaps)) < 3 * standard_error < 0.05, (np.mean(gaps), standard_error)
    a, b = rng.normal(size=(64, 4)), rng.normal(size=(16, 4))
    assert metrics.precision_recall(a, b) == metrics.precision_recall(a, b)  # the subsample is fixed by the seed


def test_knn_radii_match_bruteforce():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 3))
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.testing.assert_allclose(metrics.knn_radii(a, k=3, batch_size=7), np.sort(d, axis=1)[:, 3], rtol=1e-9)


def test_nearest_neighbour_finds_planted_duplicate():
    rng = np.random.default_rng(6)
    train = rng.normal(size=(1000, 32))
    queries = rng.normal(size=(20, 32))
    queries[7] = train[123] + 1e-3 * rng.normal(size=32)
    index, distance = metrics.nearest_neighbours(queries, train, batch_size=6)
    assert index[7] == 123 and distance[7] < 0.01
    assert np.all(np.delete(distance, 7) > 1.0)
    assert metrics.fraction_above(-distance, -0.1) == pytest.approx(1 / 20)


def _phantom_images(seeds, size=64):
    return lesion_pairs.phantom_arrays([generate_phantom(s, size) for s in seeds])["image"]


def test_ms_ssim_nearest_finds_planted_duplicate_and_diversity():
    train = _phantom_images(range(12))
    samples = _phantom_images(range(100, 105))
    samples[3] = np.clip(train[9] + 0.01 * np.random.default_rng(7).normal(size=train[9].shape), -1, 1)
    index, score = metrics.nearest_by_ms_ssim(samples, train, query_batch=2, reference_batch=5)
    assert index[3] == 9 and score[3] > 0.95
    assert np.all(np.delete(score, 3) < score[3])
    assert metrics.fraction_above(score, 0.95) == pytest.approx(1 / 5)
    # the tiled search agrees with one direct MS-SSIM per pair
    direct = np.asarray(ms_ssim(np.repeat(samples[:1] + 1, 12, 0), train + 1, max_val=2.0))
    assert index[0] == np.argmax(direct) and score[0] == pytest.approx(direct.max(), abs=1e-5)

    diverse = metrics.ms_ssim_diversity(train, num_pairs=32, batch_size=16)
    copies = metrics.ms_ssim_diversity(np.repeat(train[:1], 4, 0), num_pairs=16, batch_size=16)
    assert copies == pytest.approx(1.0, abs=1e-5) and diverse < 0.9


def test_calcification_detectability_and_mass_preservation():
    size = 256
    calcs = [generate_phantom(s, size, finding="calcification") for s in range(4)]
    data = lesion_pairs.phantom_arrays(calcs)
    findings = data["labels"][:, 1]
    same = lesions.calcification_detectability(
        data["image"], data["image"], data["mask"], data["breast_mask"], findings
    )
    assert same["images"] == 4 and same["specks"] >= 4 and same["fraction"] == 1.0
    # the same breasts without the cluster (same seed, same noise): the specks are gone
    clean = lesion_pairs.phantom_arrays([generate_phantom(s, size, finding="none") for s in range(4)])["image"]
    gone = lesions.calcification_detectability(data["image"], clean, data["mask"], data["breast_mask"], findings)
    assert gone["specks"] == same["specks"] and gone["fraction"] < 0.25

    masses = lesion_pairs.phantom_arrays([generate_phantom(s, 64, finding="mass", density="A") for s in range(4)])
    kept = lesions.lesion_preservation(
        masses["counterfactual"],
        masses["counterfactual"],
        masses["mask"],
        masses["breast_mask"],
        masses["labels"][:, 1],
    )
    assert kept["mass"]["detected"] == 4 and kept["mass"]["fraction"] == 1.0
    assert kept["calcification"]["lesions"] == 0
    removed = lesion_pairs.phantom_arrays([generate_phantom(s, 64, finding="none", density="A") for s in range(4)])
    lost = lesions.lesion_preservation(
        masses["counterfactual"],
        removed["counterfactual"],
        masses["mask"],
        masses["breast_mask"],
        masses["labels"][:, 1],
    )
    assert lost["mass"]["preserved"] == 0
