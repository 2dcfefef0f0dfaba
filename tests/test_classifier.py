import time

import numpy as np
import pytest

from ldm_jax.evaluation import classifier


def test_conditioning_accuracy_and_confusion():
    # columns: density, finding, view (predictions) / density, finding, view, laterality (targets)
    pred = np.array([[0, 1, 0], [1, 1, 1], [3, 2, 1], [2, 0, 0]])
    target = np.array([[0, 1, 0, 0], [1, 3, 1, 1], [2, 2, 1, 0], [2, 3, 0, 1]])  # finding 3 = null
    acc = classifier.conditioning_accuracy(pred, target)
    assert acc == {"density": 0.75, "finding": 1.0, "view": 1.0}
    confusion = classifier.confusion_matrices(pred, target)
    assert confusion["density"].shape == (4, 4) and confusion["density"].sum() == 4
    assert confusion["density"][2, 3] == 1 and confusion["density"][2, 2] == 1
    assert confusion["finding"].sum() == 2  # null targets left out
    # an attribute never conditioned on is left out of the accuracy
    assert "finding" not in classifier.conditioning_accuracy(pred, np.array([[0, 3, 0]] * 4))
    with pytest.raises(ValueError, match="out of range"):
        classifier.confusion_matrices(np.array([[4, 0, 0]]), np.array([[0, 0, 0]]))
    with pytest.raises(ValueError, match="expected pred"):
        classifier.conditioning_accuracy(pred, target[:3])


def test_predict_save_load_roundtrip(tmp_path):
    config = classifier.ClassifierConfig(image_size=16, channels=(8, 8), embed_dim=12, histogram_bins=8)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(5, 16, 16, 1)).astype(np.float32)
    labels = np.stack([rng.integers(0, k, 5) for k in (4, 3, 2, 2)], axis=1)
    params = classifier.train_classifier(images, labels, config, steps=3, batch_size=4)
    out = classifier.predict(params, config, images, batch_size=2)  # padded last batch
    assert out["features"].shape == (5, 12) and out["labels"].shape == (5, 3)
    assert out["density"].shape == (5, 4) and np.allclose(out["finding"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(classifier.features(params, config, images[:2]), out["features"][:2], atol=1e-5)

    path = tmp_path / "classifier.msgpack"
    classifier.save_classifier(path, params, config)
    loaded, loaded_config = classifier.load_classifier(path)
    assert loaded_config == config
    np.testing.assert_allclose(
        classifier.predict(loaded, loaded_config, images)["features"], out["features"], atol=1e-6
    )

    with pytest.raises(ValueError, match=r"\[N, 16, 16, 1\]"):
        classifier.predict(params, config, images[..., 0])
    with pytest.raises(ValueError, match="no null labels"):
        classifier.train_classifier(images, np.full((5, 4), 3), config, steps=1)
    (tmp_path / "other.msgpack").write_bytes(b"\x80")
    with pytest.raises(ValueError, match="not a phantom classifier"):
        classifier.load_classifier(tmp_path / "other.msgpack")


@pytest.mark.slow
def test_classifier_learns_density_and_view_at_64():
    """Density and view ≥ 95% held out after 600 steps (96.7% density measured); evaluate.py's
    recipe trains 800 (98.4%, docs/evaluation.md's table).

    The finding head is reported, not asserted: at 64×64 (3.1 mm pixels) calcifications are
    sub-pixel and masses are masked by glandular tissue, so it stays near chance; the bound is
    measured by test_phantoms.py::test_dense_tissue_masks_masses_and_the_counterfactual_reveals_them.
    """
    config = classifier.ClassifierConfig(image_size=64)
    start = time.perf_counter()
    params = classifier.train_on_phantoms(config, seed=0, steps=600)  # 7,000 phantoms, batches of 64
    trained = time.perf_counter() - start
    images, labels = classifier.phantom_training_set(1000, 64, seed=10**6)  # disjoint seeds
    result = classifier.accuracy_report(params, config, images, labels)
    print(f"trained in {trained:.0f}s; held-out accuracy {result['accuracy']}")
    assert result["accuracy"]["density"] >= 0.95
    assert result["accuracy"]["view"] >= 0.95
