import dataclasses
import inspect
import math

import chex
import numpy as np
import pytest

from ctrain.data import Feature, Schema, from_arrays, load_dataset, prepare
from ctrain.data.synthetic import N_TEST, N_TRAIN, N_VAL
from ctrain.train import TrainConfig


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
    # factor 0.01: class 0 (MLJBase's smaller circle) sits at the centre, class 1 on the unit circle
    assert np.median(r[circles.y_train == 0]) < 0.3 < 0.7 < np.median(r[circles.y_train == 1])
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


def test_shuffled_batches_are_deterministic_per_seed_and_epoch():
    d = load_dataset("moons")
    a = [b["x"] for b in d.batches(100, seed=1, epoch=2, shuffle=True)]
    b = [b["x"] for b in d.batches(100, seed=1, epoch=2, shuffle=True)]
    c = [b["x"] for b in d.batches(100, seed=1, epoch=3, shuffle=True)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    assert sum(len(v) for v in a) == len(d.x_train)


def test_batches_are_unshuffled_by_default_as_training_is():
    d = load_dataset("moons")
    plain = np.concatenate([b["x"] for b in d.batches(100, seed=1, epoch=2)])
    np.testing.assert_array_equal(plain, d.x_train[:len(plain)])  # the training split's own order
    assert inspect.signature(d.batches).parameters["shuffle"].default is TrainConfig().shuffle is False
    shuffled = np.concatenate([b["x"] for b in d.batches(100, seed=1, epoch=2, shuffle=True)])
    assert not np.array_equal(plain, shuffled)


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


# --- labels: any label set maps to 0..K-1 with its names kept ---------------------------------------------

def _xy(n=60, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2))


@pytest.mark.parametrize("labels,names", [
    ([1, 2], ("1", "2")),
    ([0, 7], ("0", "7")),
    ([2.0, 5.0], ("2", "5")),  # integer-valued floats are the same classes as their integers
    (["yes", "no"], ("no", "yes")),
    ([True, False], ("False", "True")),
    ([3, 1, 2], ("1", "2", "3")),
])
def test_from_arrays_maps_any_label_set_to_consecutive_classes(labels, names):
    raw = np.array(labels * 20)
    d = from_arrays(_xy(len(raw)), raw, test_fraction=0.25)
    assert d.num_classes == len(names)
    assert d.class_names == names
    for y in (d.y_train, d.y_test):
        chex.assert_type(y, np.int32)
        assert set(np.unique(y)) == set(range(len(names)))
    np.testing.assert_array_equal(np.bincount(np.r_[d.y_train, d.y_test]), [20] * len(names))  # no empty class


def test_from_arrays_codes_follow_the_rows():
    x = np.r_[np.zeros((20, 1)), np.ones((20, 1))] + np.random.default_rng(0).normal(0, 0.01, (40, 1))
    y = np.array(["low"] * 20 + ["high"] * 20)
    d = from_arrays(x, y, standardize=False)
    high = d.class_names.index("high")
    np.testing.assert_array_equal(d.x_train[:, 0] > 0.5, d.y_train == high)


@pytest.mark.parametrize("bad,count", [
    (np.r_[np.zeros(20), np.ones(18), np.nan, np.nan], 2),
    (np.array([0] * 20 + [1] * 19 + [None], dtype=object), 1),
])
def test_missing_labels_raise_naming_count_and_rows(bad, count):
    with pytest.raises(ValueError, match=rf"{count} missing label\(s\).*rows \[3[89]"):
        from_arrays(_xy(40), bad)


def test_fractional_labels_and_mixed_types_raise():
    with pytest.raises(ValueError, match=r"non-integer.*0.5 at row 1.*astype\(str\)"):
        from_arrays(_xy(4), [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(TypeError, match="mixes label types"):
        from_arrays(_xy(4), np.array([0, "a", 1, "b"], dtype=object))
    with pytest.raises(ValueError, match="only one class"):
        from_arrays(_xy(10), ["a"] * 10)


def test_prepare_rejects_labels_that_are_not_class_indices():
    x = _xy(10)
    with pytest.raises(TypeError, match="from_arrays"):
        prepare("p", x, np.array(["a", "b"] * 5), x, np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"y_train: 1 label\(s\) are not integers.*row 3"):
        prepare("p", x, np.r_[0, 1, 0, np.nan, 0, 1, 0, 1, 0, 1], x, np.arange(10) % 2)
    with pytest.raises(ValueError, match="class indices 0..K-1, found -1"):
        prepare("p", x, np.r_[-1, 1, 0, 1, 0, 1, 0, 1, 0, 1], x, np.arange(10) % 2)


def test_input_stats_standardise_continuous_columns_and_leave_one_hot_columns_alone():
    rng = np.random.default_rng(0)
    x = np.c_[rng.uniform(18, 80, 300), rng.normal(size=300), np.eye(3)[rng.choice(3, 300, p=[0.8, 0.15, 0.05])]]
    d = from_arrays(x, rng.integers(0, 2, 300), feature_names=["age", "income", "c=a", "c=b", "c=c"],
                    categorical={"c": ["c=a", "c=b", "c=c"]}, standardize=False)
    mean, std = d.input_stats()
    chex.assert_shape((mean, std), (5,))
    np.testing.assert_allclose(mean[:2], d.x_train[:, :2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[:2], d.x_train[:, :2].std(0), rtol=1e-5)
    np.testing.assert_array_equal(mean[2:], 0.0)
    np.testing.assert_array_equal(std[2:], 1.0)  # the rare category (std about 0.2) is not weighted up
    # They follow the units: a rescaled copy standardises to the same inputs.
    big = d.affine(10.0, 3.0)
    z = lambda data: (data.x_train - data.input_stats()[0]) / data.input_stats()[1]
    np.testing.assert_allclose(z(big), z(d), rtol=1e-4, atol=1e-4)


# --- one-hot groups --------------------------------------------------------------------------------------

def _one_hot_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.c_[rng.normal(size=n), np.eye(3)[rng.integers(0, 3, n)]]
    return x, np.arange(n) % 2, dict(feature_names=["a", "c=1", "c=2", "c=3"], categorical={"c": ["c=1", "c=2", "c=3"]})


@pytest.mark.parametrize("row", [[0.5, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
def test_one_hot_groups_need_exactly_one_1_per_row(row):
    x, y, kw = _one_hot_data()
    x[[7, 12], 1:] = row
    with pytest.raises(ValueError, match=r"one-hot group 'c'.*2 row\(s\).*first is row 7"):
        from_arrays(x, y, **kw)


def test_one_hot_groups_are_checked_in_every_split_of_a_dataset():
    x, y, kw = _one_hot_data()
    d = from_arrays(x, y, **kw)
    bad = d.x_test.copy()
    bad[3, 1:] = [0.2, 0.8, 0.0]
    with pytest.raises(ValueError, match=r"x_test: one-hot group 'c'.*1 row\(s\).*row 3"):
        dataclasses.replace(d, x_test=bad)
    with pytest.raises(ValueError, match=r"x_val: one-hot group 'c'"):
        prepare("p", d.x_train, d.y_train, d.x_test, d.y_test, schema=d.schema, x_val=bad, y_val=d.y_test)


def test_a_feature_in_two_groups_raises_naming_both():
    with pytest.raises(ValueError, match=r"feature 'b' is listed in two one-hot groups, 'g' and 'h'"):
        Schema.build(["a", "b", "c"], categorical={"g": ["a", "b"], "h": ["b", "c"]})
    with pytest.raises(ValueError, match=r"feature 'a' is listed twice in one-hot group 'g'"):
        Schema.build(["a", "b"], categorical={"g": ["a", "a", "b"]})


def test_schema_keywords_need_lists_not_strings():
    with pytest.raises(TypeError, match=r"immutable must be a list.*\['age'\]"):
        Schema.build(["age", "b"], immutable="age")
    with pytest.raises(TypeError, match=r"categorical\['g'\] must be a list"):
        Schema.build(["a", "b"], categorical={"g": "ab"})
    with pytest.raises(ValueError, match=r"bounds\['a'\] must be a \(lower, upper\) pair"):
        Schema.build(["a", "b"], bounds={"a": 3.0})
    with pytest.raises(TypeError, match="Schema takes Feature objects"):
        Schema(("a", "b"))


# --- splits ------------------------------------------------------------------------------------------------

def test_zero_rows_or_columns_raise():
    with pytest.raises(ValueError, match="x has 0 rows"):
        from_arrays(np.zeros((0, 2)), np.zeros(0, int))
    with pytest.raises(ValueError, match="0 feature columns"):
        from_arrays(np.zeros((5, 0)), np.arange(5) % 2)


def test_a_split_that_would_be_empty_raises_naming_it():
    with pytest.raises(ValueError, match=r"the test split is empty.*per class.*test fraction"):
        from_arrays(_xy(4), [0, 0, 1, 1], test_fraction=0.2)
    with pytest.raises(ValueError, match=r"the validation split is empty"):
        from_arrays(_xy(8), [0] * 4 + [1] * 4, test_fraction=0.5, val_fraction=0.1)


def test_a_class_too_small_for_the_split():
    y = [0] * 10 + [1] * 10 + [2]
    # one member goes to train under stratification: the class is kept, absent from test only
    d = from_arrays(_xy(21), y, test_fraction=0.2)
    assert d.num_classes == 3 and 2 in d.y_train and 2 not in d.y_test
    with pytest.raises(ValueError, match=r"classes \['2'\] \(with \[1\] rows in all\) get no training rows"):
        from_arrays(_xy(21), y, test_fraction=0.6)


def test_an_empty_test_split_is_allowed_only_when_built_on_purpose():
    x = _xy(20)
    d = prepare("all_train", x, np.arange(20) % 2, np.zeros((0, 2)), np.zeros(0, int))
    chex.assert_shape(d.x_test, (0, 2))
    assert len(d.x_train) == 20
    with pytest.raises(ValueError, match="training split is empty"):
        prepare("p", np.zeros((0, 2)), np.zeros(0, int), x, np.arange(20) % 2, num_classes=2)


def test_dataset_checks_class_names_against_classes():
    d = load_dataset("moons", n_train=20, n_val=0, n_test=10)
    with pytest.raises(ValueError, match=r"3 class names \['a', 'b', 'c'\] for 2 classes"):
        dataclasses.replace(d, class_names=("a", "b", "c"))


def test_bad_array_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="equal-length rows"):
        from_arrays([[1.0, 2.0], [3.0]], [0, 1])
    with pytest.raises(ValueError, match="must be real numbers"):
        from_arrays(np.ones((4, 2), complex), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"y\.ravel\(\)"):
        from_arrays(_xy(10), np.zeros((10, 1)))
    bools = np.random.default_rng(0).integers(0, 2, (20, 2)).astype(bool)  # flags are accepted as 0/1
    d = from_arrays(bools, np.arange(20) % 2, standardize=False)
    assert set(np.unique(np.r_[d.x_train, d.x_test])) == {0.0, 1.0} and len(d.x_train) + len(d.x_test) == 20


# --- load_dataset keywords -----------------------------------------------------------------------------------

def test_load_dataset_unknown_keyword_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['nosie'\]; load_synthetic takes \['seed', 'n_train'"):
        load_dataset("moons", nosie=0.3)
    with pytest.raises(TypeError, match=r"\['balanced'\]; load_digits takes .*'balance'"):
        load_dataset("digits", balanced=True)
    with pytest.raises(TypeError, match="dataset name must be a string"):
        load_dataset(3)


# --- original units and integer features ----------------------------------------------------------

def _timestamps(n: int = 160):
    rng = np.random.default_rng(0)
    ts = 1.7e9 + rng.permutation(np.linspace(-30, 30, n))  # n distinct seconds, far from 0
    return np.c_[ts, rng.normal(size=n)], np.arange(n) % 2


def test_original_units_warn_when_float32_cannot_hold_a_column_and_decode_keeps_it():
    x, y = _timestamps()
    d = from_arrays(x, y, feature_names=["ts", "z"])
    assert np.unique(d.x_train[:, 0]).size == len(d.x_train)  # standardised, every value distinct
    with pytest.warns(RuntimeWarning, match=r"'ts' keeps [1-9] of \d+ distinct training values.*Dataset.decode") as w:
        orig = d.in_original_units()
    assert "'z'" not in str(w[0].message)
    assert np.unique(orig.x_train[:, 0]).size < 10  # the collapse the warning names
    back = d.decode(d.x_train)
    assert back["ts"].dtype == np.float64 and back["ts"].nunique() == len(d.x_train)
    raw = d.standardizer.inverse(d.x_train)
    assert raw.dtype == np.float64 and np.unique(raw[:, 0]).size == len(d.x_train)
    # each value is its source's, to within float32 rounding of the standardised copy (17 s · 2^-24)
    assert np.abs(raw[:, :1] - x[None, :, 0]).min(1).max() < 1e-5


def test_original_units_of_ordinary_columns_do_not_warn():
    d = load_dataset("moons")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.in_original_units()


def test_integer_features_from_arrays_must_be_whole_and_decode_to_int():
    rng = np.random.default_rng(0)
    x = np.c_[rng.integers(0, 9, 60), rng.normal(size=60)]
    d = from_arrays(x, np.arange(60) % 2, feature_names=["kids", "z"], integer=["kids"])
    assert [f.integer for f in d.schema.features] == [True, False]
    out = d.decode(d.x_train)
    assert list(out.columns) == ["kids", "z"] and out["kids"].dtype == np.int64
    np.testing.assert_array_equal(d.encode(out), d.x_train)  # arrays-built Datasets round-trip too
    x[7, 0] = 2.5
    with pytest.raises(ValueError, match=r"integer feature 'kids' holds 2.5 at row 7"):
        from_arrays(x, np.arange(60) % 2, feature_names=["kids", "z"], integer=["kids"])
    with pytest.raises(ValueError, match="only a continuous feature can be integer"):
        Feature("c=a", kind="categorical", group="c", integer=True)
