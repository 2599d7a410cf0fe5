import math

import chex
import numpy as np
import pytest

from ctrain.data import Feature, Schema, from_arrays, load_dataset
from ctrain.data.synthetic import N_TEST, N_TRAIN, N_VAL


@pytest.mark.parametrize("name", ["linearly_separable", "overlapping", "circles", "moons"])
def test_synthetic_shapes_labels_and_determinism(name):
    d = load_dataset(name)
    chex.assert_shape(d.x_train, (N_TRAIN, 2))
    chex.assert_shape(d.x_val, (N_VAL, 2))
    chex.assert_shape(d.x_test, (N_TEST, 2))
    assert d.num_classes == 2
    for y in (d.y_train, d.y_val, d.y_test):
        assert set(np.unique(y)) == {0, 1}
        assert abs(y.mean() - 0.5) < 0.01  # stratified: both classes equally represented
    again = load_dataset(name)
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.y_test, again.y_test)
    other = load_dataset(name, seed=7)
    assert not np.array_equal(d.x_train, other.x_train)


def test_synthetic_geometry():
    circles = load_dataset("circles")
    r = np.linalg.norm(circles.x_train, axis=1)
    # factor 0.01: class 1 sits at the centre, class 0 on the unit circle
    assert np.median(r[circles.y_train == 1]) < 0.3 < 0.7 < np.median(r[circles.y_train == 0])
    ls, ol = load_dataset("ls"), load_dataset("ol")
    assert ls.x_train[ls.y_train == 0].std() < ol.x_train[ol.y_train == 0].std()


def test_unknown_dataset_names_choices():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_inferred_bounds_contain_the_data_and_follow_the_formula():
    d = load_dataset("overlapping", n_std=2.0)
    lo, hi = d.schema.bounds_array()
    x = np.concatenate([d.x_train, d.x_val])
    assert np.all(x >= lo) and np.all(x <= hi)
    np.testing.assert_allclose(lo, np.minimum(x.mean(0) - 2 * x.std(0), x.min(0)), rtol=1e-5)
    wide = load_dataset("overlapping", n_std=10.0)
    assert np.all(wide.schema.bounds_array()[1] > hi)


def test_standardisation_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(1000, 3))
    x[:, 2] += 10 * (rng.uniform(size=1000) < 0.3)  # a skewed column, so train and all-data means differ
    y = (x[:, 0] > 5).astype(int)
    d = from_arrays(x, y, seed=1, test_fraction=0.3)
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1.0, atol=1e-4)
    raw_train = d.standardizer.inverse(d.x_train)
    np.testing.assert_allclose(d.standardizer.mean, raw_train.mean(0), rtol=1e-5)
    assert not np.allclose(d.standardizer.mean, x.mean(0), rtol=1e-4)  # not fitted on all the data
    assert np.abs(d.x_test.mean(0)).max() > 1e-3  # test rows transformed with train statistics, not refitted


def test_from_arrays_split_is_deterministic_and_stratified():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 4)), rng.integers(0, 3, 500)
    a = from_arrays(x, y, seed=3, test_fraction=0.2, val_fraction=0.1)
    b = from_arrays(x, y, seed=3, test_fraction=0.2, val_fraction=0.1)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 500
    assert abs(len(a.x_test) - 100) <= 3 and abs(len(a.x_val) - 50) <= 3
    c = from_arrays(x, y, seed=4, test_fraction=0.2)
    assert not np.array_equal(a.x_test, c.x_test)


def test_from_arrays_schema_keywords_and_user_bounds():
    rng = np.random.default_rng(0)
    x = np.c_[rng.uniform(18, 80, 300), rng.normal(size=300), np.eye(3)[rng.integers(0, 3, 300)]]
    y = rng.integers(0, 2, 300)
    d = from_arrays(x, y, feature_names=["age", "income", "c=a", "c=b", "c=c"], immutable=["age"],
                    increase=["income"], categorical={"c": ["c=a", "c=b", "c=c"]}, bounds={"income": (-5.0, 5.0)})
    f = {feat.name: feat for feat in d.schema.features}
    assert f["age"].mutability == "immutable" and f["income"].mutability == "increase"
    assert d.schema.groups == {"c": (2, 3, 4)}
    assert (f["c=a"].lower, f["c=a"].upper) == (0.0, 1.0)
    np.testing.assert_array_equal(d.x_train[:, 2:].sum(1), 1.0)  # one-hot columns are not standardised
    std_lo = (-5.0 - d.standardizer.mean[1]) / d.standardizer.scale[1]
    assert math.isclose(f["income"].lower, std_lo, rel_tol=1e-5)  # user bounds mapped into standardised units


def test_class_balanced_subsampling():
    d = load_dataset("overlapping")
    small = d.subsample(101, seed=0)
    assert len(small.x_train) == 101
    assert abs(int((small.y_train == 0).sum()) - int((small.y_train == 1).sum())) <= 1
    np.testing.assert_array_equal(small.x_train, d.subsample(101, seed=0).x_train)


def test_batches_are_deterministic_per_seed_and_epoch():
    d = load_dataset("moons")
    a = [b["x"] for b in d.batches(100, seed=1, epoch=2)]
    b = [b["x"] for b in d.batches(100, seed=1, epoch=2)]
    c = [b["x"] for b in d.batches(100, seed=1, epoch=3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    assert sum(len(v) for v in a) == len(d.x_train)


# --- bad input ---------------------------------------------------------------------------------------

def test_wrong_shapes_raise():
    with pytest.raises(ValueError, match="2-D array"):
        from_arrays(np.zeros(10), np.zeros(10, int))
    with pytest.raises(ValueError, match=r"y must have shape \(10,\)"):
        from_arrays(np.zeros((10, 2)), np.zeros(9, int))
    with pytest.raises(ValueError, match="3 features but the schema describes 2"):
        from_arrays(np.zeros((10, 3)), np.zeros(10, int), schema=Schema.default(2))


def test_nan_features_raise_naming_the_feature():
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf.*'b'"):
        from_arrays(x, np.arange(50) % 2, feature_names=["a", "b", "c"])


def test_unknown_feature_name_raises():
    with pytest.raises(ValueError, match="unknown feature name 'agee'"):
        from_arrays(np.zeros((10, 2)), np.arange(10) % 2, feature_names=["age", "income"], immutable=["agee"])
    with pytest.raises(ValueError, match="unknown feature name 'zz'"):
        Schema.default(2).with_mutability(zz="immutable")


def test_lower_bound_above_upper_raises():
    with pytest.raises(ValueError, match="lower bound 2.0 is greater than upper bound 1.0"):
        Feature("a", lower=2.0, upper=1.0)
    with pytest.raises(ValueError, match="greater than upper bound"):
        from_arrays(np.zeros((10, 2)), np.arange(10) % 2, feature_names=["a", "b"], bounds={"a": (3, -3)})


def test_invalid_schema_definitions_raise():
    with pytest.raises(ValueError, match="mutability must be one of"):
        Feature("a", mutability="sometimes")
    with pytest.raises(ValueError, match="needs the name of its one-hot group"):
        Feature("a", kind="categorical")
    with pytest.raises(ValueError, match="mixes mutabilities"):
        Schema((Feature("a", "categorical", "g"), Feature("b", "categorical", "g", mutability="immutable")))
    with pytest.raises(ValueError, match="two mutabilities"):
        Schema.build(["a", "b"], immutable=["a"], increase=["a"])
