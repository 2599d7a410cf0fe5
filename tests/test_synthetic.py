"""Synthetic sets generated with MLJBase's formulas (the reference's data): geometry, randomness, seeding."""
import warnings

import chex
import numpy as np
import pytest

from ctrain.data import load_dataset
from ctrain.data.synthetic import (BLOB_STD, CENTER_BOX, blob_bayes_accuracy, blob_centres, make_blobs, make_circles,
                                   make_moons)


def lda_accuracy(d) -> float:
    """Test accuracy of Fisher's linear discriminant fitted on the training split (a linear model, no training)."""
    m0, m1 = d.x_train[d.y_train == 0].mean(0), d.x_train[d.y_train == 1].mean(0)
    cov = np.cov(np.r_[d.x_train[d.y_train == 0] - m0, d.x_train[d.y_train == 1] - m1].T)
    w = np.linalg.solve(cov, m1 - m0)
    pred = (d.x_test - (m0 + m1) / 2) @ w > 0
    return float(np.mean(pred == (d.y_test == 1)))


def test_moons_lie_on_mljbase_half_circles_with_random_angles():
    x, y = make_moons(2000, noise=0.0, seed=3)
    chex.assert_shape(x, (2000, 2))
    assert np.bincount(y).tolist() == [1000, 1000]
    upper, lower = x[y == 0], x[y == 1]
    # class 0: (cos θ, sin θ); class 1: (1 + cos θ, 0.3 − sin θ), θ in [0, π]
    np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(lower - [1.0, 0.3], axis=1), 1.0, atol=1e-6)
    assert upper[:, 1].min() >= 0 and lower[:, 1].max() <= 0.3 + 1e-9
    theta = np.arccos(np.clip(upper[:, 0], -1, 1))
    gaps = np.diff(np.sort(theta))
    assert gaps.std() > 0.5 * gaps.mean()  # random angles, not an even grid
    hist = np.histogram(theta, bins=4, range=(0, np.pi))[0]
    assert hist.min() > 0.8 * hist.mean()  # spread uniformly over [0, π]


@pytest.mark.parametrize("make,kwargs", [(make_moons, {}), (make_circles, {"factor": 0.01})])
def test_noise_is_gaussian_with_the_given_std(make, kwargs):
    clean, _ = make(20000, noise=0.0, seed=1, **kwargs)
    noisy, _ = make(20000, noise=0.1, seed=1, **kwargs)
    offset = noisy - clean  # the same angles: they are drawn before the noise
    np.testing.assert_allclose(offset.std(0), 0.1, rtol=0.05)
    np.testing.assert_allclose(offset.mean(0), 0.0, atol=0.005)


def test_circles_inner_class_0_outer_class_1_at_random_angles():
    x, y = make_circles(1000, noise=0.0, factor=0.3, seed=0)
    r = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(r[y == 0], 0.3, rtol=1e-6)
    np.testing.assert_allclose(r[y == 1], 1.0, rtol=1e-6)
    angle = np.arctan2(x[y == 1, 1], x[y == 1, 0])
    gaps = np.diff(np.sort(angle))
    assert gaps.std() > 0.5 * gaps.mean()


def test_blob_centres_are_random_in_the_box_and_the_points_follow_them():
    lo, hi = CENTER_BOX
    centres = np.stack([blob_centres(s) for s in range(50)])
    assert centres.min() > lo and centres.max() < hi
    assert centres.std() > (hi - lo) / 5  # spread over the box, not fixed
    for seed, std in ((0, 0.5), (7, 2.0)):
        x, y = make_blobs(20000, std=std, seed=seed)
        c = blob_centres(seed)
        for k in (0, 1):
            np.testing.assert_allclose(x[y == k].mean(0), c[k], atol=5 * std / np.sqrt(10000))
            np.testing.assert_allclose(x[y == k].std(0), std, rtol=0.05)


def test_synthetic_data_is_deterministic_per_seed():
    for make, kw in ((make_moons, {}), (make_circles, {}), (make_blobs, {"std": 0.5})):
        a, ya = make(300, seed=5, **kw)
        b, yb = make(300, seed=5, **kw)
        c, _ = make(300, seed=6, **kw)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
        assert not np.allclose(a, c)


def test_default_linearly_separable_is_linearly_separable():
    d = load_dataset("linearly_separable")
    assert blob_bayes_accuracy(42, BLOB_STD["linearly_separable"]) > 0.999
    assert lda_accuracy(d) > 0.99


def test_default_overlapping_overlaps_as_its_centres_predict():
    d = load_dataset("overlapping")
    bayes = blob_bayes_accuracy(42, BLOB_STD["overlapping"])
    assert bayes < 0.97  # the classes really overlap with the default seed
    assert abs(lda_accuracy(d) - bayes) < 0.03  # and the data has the geometry Φ(d / 2σ) describes


def test_a_seed_with_close_centres_warns_that_ls_is_not_separable():
    close = next(s for s in range(1000) if blob_bayes_accuracy(s, BLOB_STD["linearly_separable"]) < 0.99)
    with pytest.warns(UserWarning, match=f"seed {close}.*choose another seed"):
        d = load_dataset("linearly_separable", seed=close)
    assert lda_accuracy(d) < 0.995
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("linearly_separable")  # the default seed is separable: no warning


def test_generators_reject_bad_arguments():
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        make_moons(1, seed=0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        make_circles(10, noise=-0.1, seed=0)
    with pytest.raises(ValueError, match="factor must be strictly between 0 and 1"):
        make_circles(10, factor=1.5, seed=0)
    with pytest.raises(ValueError, match="std must be > 0"):
        make_blobs(10, std=0.0, seed=0)
    with pytest.raises(ValueError, match="center_box"):
        blob_centres(0, center_box=(1.0, -1.0))


def test_load_synthetic_rejects_non_integer_sizes_and_seeds():
    with pytest.raises(TypeError, match="n_train must be an integer, got 2.5"):
        load_dataset("moons", n_train=2.5)
    with pytest.raises(TypeError, match="seed must be an integer"):
        load_dataset("circles", seed="a")
