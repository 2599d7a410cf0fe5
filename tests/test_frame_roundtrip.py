"""A researcher's own table end to end (issue 33): rows in, counterfactuals back as rows in the table's own columns,
units and categories; new rows encoded as the training rows were; integer columns kept whole."""
import warnings

import jax
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.data import encode_labels, from_dataframe
from ctrain.data.dataset import split_indices
from ctrain.models import make_model
from ctrain.search import explain, predict
from ctrain.train import create_train_state, train_step

pd = pytest.importorskip("pandas")

N = 300
IMMUTABLE = ["race", "gender"]
INTEGER = ["age", "hours_per_week"]


def adult_like(n: int = N, seed: int = 0) -> "pd.DataFrame":
    """Returns a DiCE-style Adult frame: string categoricals, integer columns, a string target."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 70, n),
        "workclass": rng.choice(["Private", "Self-emp", "Government"], n),
        "education": rng.choice(["HS-grad", "Bachelors", "Masters"], n),
        "race": rng.choice(["White", "Other"], n),
        "gender": rng.choice(["Female", "Male"], n),
        "hours_per_week": rng.integers(10, 80, n),
    })
    score = df["age"] + 0.5 * df["hours_per_week"] + 15 * (df["education"] == "Masters")
    df["income"] = np.where(score > score.median(), ">50K", "<=50K")
    return df


def build(df, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the one-way warning has its own test
        return from_dataframe(df, "income", immutable=IMMUTABLE, increase=["age"], seed=0, **kwargs)


def train_rows(df, data, test_fraction=0.2, val_fraction=0.0):
    """Returns the frame rows from_dataframe put in the training split (the split is split_indices')."""
    labels, _ = encode_labels(df["income"].to_numpy())
    _, _, train_idx = split_indices(labels, [test_fraction, val_fraction], seed=0)
    return df.iloc[train_idx].reset_index(drop=True)


@pytest.fixture(scope="module")
def table():
    df = adult_like()
    data = build(df)
    apply_fn, params = make_model("mlp", data.num_features, data.num_classes, jax.random.key(0),
                                  input_stats=data.input_stats())
    state = create_train_state(apply_fn, params, learning_rate=1e-2)
    for _ in range(8):  # the jitted vanilla step (BL), compiled once for the suite, is cheaper here than fit
        for batch in data.batches(30):
            state, _ = train_step(state, batch)
    factuals = data.x_test[:24]
    e = explain(state.apply_fn, state.params, factuals, key=jax.random.key(1), constraints=data.constraints())
    return df, data, state, e


def test_counterfactuals_come_back_as_rows_of_the_users_table(table):
    df, data, state, e = table
    assert e.valid.mean() > 0.5, "the tiny model should be explainable"
    frame = e.to_frame(data, unchanged=None)
    assert list(frame.index.get_level_values("kind")[:2]) == ["factual", "counterfactual"]
    assert len(frame) == 2 * len(e.x)
    factual, cf = frame.xs("factual", level="kind"), frame.xs("counterfactual", level="kind")
    for c in ["workclass", "education", "race", "gender"]:
        assert set(cf[c]) <= set(df[c]), c  # categories are the training levels, never fractions
    for c in INTEGER:
        assert pd.api.types.is_integer_dtype(cf[c].dtype) and cf[c].dtype == df[c].dtype, c
    for c in IMMUTABLE:
        pd.testing.assert_series_equal(cf[c], factual[c], check_names=False)
    assert (cf["age"] >= factual["age"]).all()  # increase-only holds in the user's units too
    np.testing.assert_array_equal(cf["valid"].to_numpy(bool), e.valid)
    # the rows marked valid are those the model gives the target class
    np.testing.assert_array_equal(predict(state.apply_fn, state.params, e.x_cf)[e.valid], e.target[e.valid])
    np.testing.assert_array_equal(cf["income"], np.array(data.class_names)[e.target])
    np.testing.assert_array_equal(factual["income"], np.array(data.class_names)[e.predicted])
    np.testing.assert_allclose(cf["cost"], np.abs(e.x_cf - e.x).sum(1), rtol=1e-6)
    assert factual["cost"].isna().all() and factual["valid"].isna().all()


def test_unchanged_cells_are_marked_like_dice(table):
    _, data, _, e = table
    plain = e.to_frame(data, unchanged=None)
    marked = e.to_frame(data)
    factual, cf = plain.xs("factual", level="kind"), plain.xs("counterfactual", level="kind")
    features = [col.name for col in data.table.columns]
    same = cf[features].eq(factual[features]).to_numpy()
    shown = marked.xs("counterfactual", level="kind")[features].to_numpy()
    assert (shown[same] == "-").all() and not (shown[~same] == "-").any()
    assert same[:, [features.index(c) for c in IMMUTABLE]].all() and not same.all()
    assert "income" in marked.columns  # the target column, beside the features
    # factual rows are shown whole (their columns share the counterfactuals' object dtype)
    pd.testing.assert_frame_equal(marked.xs("factual", level="kind"), factual, check_dtype=False)


def test_a_decoded_counterfactual_is_what_the_model_was_shown_and_valid(table):
    _, data, state, e = table
    decoded = data.decode(e.x_cf)
    again = data.encode(decoded)
    # integer features were searched on their lattice, so rounding them in decode moves nothing
    np.testing.assert_allclose(again, e.x_cf, atol=1e-5)
    got = predict(state.apply_fn, state.params, again)
    np.testing.assert_array_equal(got[e.valid], e.target[e.valid])
    assert e.valid.mean() > 0.5


def test_encoding_the_training_rows_gives_the_training_matrix():
    df = adult_like()
    data = build(df)
    np.testing.assert_array_equal(data.encode(train_rows(df, data)), data.x_train)
    assert data.encode(train_rows(df, data)).dtype == np.float32
    # the target column may be there or not
    np.testing.assert_array_equal(data.encode(train_rows(df, data).drop(columns="income")), data.x_train)


def test_decoding_the_training_matrix_gives_the_training_rows():
    df = adult_like()
    df["edu_level"] = pd.Categorical(df["education"], categories=["HS-grad", "Bachelors", "Masters", "PhD"])
    df["owner"] = df["age"] % 2 == 0
    df["rate"] = np.random.default_rng(1).normal(30.0, 5.0, len(df)).astype(np.float32)
    data = build(df)
    expected = train_rows(df, data).drop(columns="income")
    got = data.decode(data.x_train)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)
    assert got["edu_level"].dtype == df["edu_level"].dtype and got["owner"].dtype == bool
    assert got["rate"].dtype == np.float32


def test_new_rows_are_encoded_with_the_training_statistics_not_their_own():
    df = adult_like()
    data = build(df)
    age = data.schema.index("age")
    older = data.encode(df.assign(age=df["age"] + 30))
    base = data.encode(df)
    np.testing.assert_allclose(older[:, age] - base[:, age], 30 / data.standardizer.scale[age], rtol=1e-5)
    assert older[:, age].mean() > 1.0  # 30 years older is far above the training mean, not re-centred at 0


@pytest.mark.parametrize("change,match", [
    (lambda d: d.assign(workclass=d["workclass"].where(d.index != 3, "Never-worked")),
     r"column 'workclass' holds the category 'Never-worked' \(row 3\).*categories are \['Government'"),
    (lambda d: d.drop(columns="education"), r"lacks column\(s\) \['education'\]"),
    (lambda d: d.assign(agee=1), r"column\(s\) \['agee'\] that the Dataset was not built with"),
    (lambda d: d.assign(age=d["age"].astype(str)), r"column 'age' must hold numbers.*got '\d+' at row 0"),
    (lambda d: d.assign(age=d["age"] + 0.5), r"column 'age' holds whole numbers, got 18\.5|column 'age' holds "
                                              r"whole numbers, got \d+\.5 at row 0"),
    (lambda d: d.assign(hours_per_week=np.where(d.index == 2, np.nan, d["hours_per_week"])),
     r"missing values in column\(s\) \{'hours_per_week': 1\}"),
])
def test_rows_that_do_not_fit_the_training_encoding_raise_naming_column_and_value(change, match):
    df = adult_like()
    data = build(df)
    with pytest.raises(ValueError, match=match):
        data.encode(change(df))


def test_integer_columns_are_declared_in_the_schema_and_their_lattice_is_the_whole_numbers():
    df = adult_like().assign(hours_per_week=lambda d: d["hours_per_week"].astype(np.float64))
    data = build(df, integer=["hours_per_week"])
    assert {f.name for f in data.schema.features if f.integer} == set(INTEGER)
    origin, step = data.lattice()
    chex_shape = (data.num_features,)
    assert origin.shape == step.shape == chex_shape
    for name in INTEGER:
        j = data.schema.index(name)
        assert step[j] == pytest.approx(1 / data.standardizer.scale[j])
        k = (data.x_train[:, j].astype(np.float64) - origin[j]) / step[j]
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)  # every training value is a lattice point
        # the lattice points are the whole numbers in original units
        np.testing.assert_allclose(np.round(k) * step[j] + origin[j],
                                   (np.round(data.standardizer.inverse(data.x_train)[:, j]) -
                                    data.standardizer.mean[j]) / data.standardizer.scale[j], atol=1e-9)
    others = [j for j, f in enumerate(data.schema.features) if not f.integer]
    assert not step[others].any() and not origin[others].any()
    assert data.decode(data.x_train)["hours_per_week"].dtype == np.int64
    assert not build(df).schema.features[data.schema.index("hours_per_week")].integer  # float, undeclared
    with pytest.raises(ValueError, match=r"column 'hours_per_week' holds whole numbers, got 10\.5 at row 0"):
        build(df.assign(hours_per_week=10.5 + np.arange(len(df)) % 7), integer=["hours_per_week"])
    with pytest.raises(ValueError, match=r"integer names categorical column\(s\) \['race'\]"):
        build(df, integer=["race"])


def test_the_dataset_passes_its_lattice_to_the_constraints(monkeypatch):
    data = build(adult_like())
    seen, original = {}, cons.make_constraints

    def make_constraints(width, *, grid_origin=None, grid_step=None, **kwargs):
        seen.update(grid_origin=grid_origin, grid_step=grid_step, kwargs=kwargs)
        return original(width, **kwargs)

    monkeypatch.setattr(cons, "make_constraints", make_constraints)
    data.constraints()
    origin, step = data.lattice()
    np.testing.assert_array_equal(seen["grid_origin"], origin)
    np.testing.assert_array_equal(seen["grid_step"], step)
    # the rest is what from_schema passes
    np.testing.assert_array_equal(seen["kwargs"]["scale"], data.schema.scale_array())
    assert seen["kwargs"]["groups"] == list(data.schema.groups.values())


def test_a_one_way_feature_without_a_bound_warns_once_suggesting_bounds():
    df = adult_like()
    with pytest.warns(UserWarning) as record:
        from_dataframe(df, "income", increase=["age"], decrease=["hours_per_week"])
    ours = [w for w in record if "bound" in str(w.message)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "'age' is increase-only with no upper bound" in text and "'hours_per_week' is decrease-only" in text
    assert "bounds={'age': (lower, upper)}" in text
    assert ours[0].filename == __file__  # it points at the user's call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_dataframe(df, "income", increase=["age"], bounds={"age": (18, 90)})


def test_an_empty_frame_and_ambiguous_levels_are_named():
    df = adult_like()
    with pytest.raises(ValueError, match=r"the DataFrame is empty \(0 rows"):
        from_dataframe(df.iloc[:0], "income")
    mixed = df.assign(code=np.array([1, "1", 2, "2"] * (len(df) // 4), dtype=object))
    with pytest.raises(ValueError, match=r"column 'code' has ambiguous levels 1 and '1'.*astype\(str\)"):
        from_dataframe(mixed, "income")


def test_the_explanation_says_what_its_figures_mean(table):
    _, _, _, e = table
    text = e.describe()
    s = e.summary()
    assert set(s) == {"n", "converged", "valid", "mean_steps", "mean_cost_l1"}  # the keys callers read
    assert f"{s['valid']:.2f}" in text and f"{s['converged']:.2f}" in text
    assert "standard deviations" in text and "p(target | x') >= tau" in text and "argmax" in text


def test_an_arrays_built_dataset_gives_a_frame_too():
    from ctrain.data import from_arrays
    from ctrain.search import Explanation
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=40), np.eye(2)[np.arange(40) % 2]]
    data = from_arrays(x, np.where(np.arange(40) % 3, "yes", "no"), feature_names=["z", "c=a", "c=b"],
                       categorical={"c": ["c=a", "c=b"]})
    f = data.x_test[:2]
    moved = f.copy()
    moved[:, 0] += 1.0
    e = Explanation(x=f, x_cf=moved, target=np.array([1, 0]), predicted=np.array([0, 1]),
                    converged=np.array([True, False]), valid=np.array([True, False]), steps=np.array([3, 30]),
                    x_ae=f, p_target=np.array([0.8, 0.4]))
    frame = e.to_frame(data)
    assert list(frame.columns) == ["z", "c", "class", "valid", "p_target", "cost"]
    cf = frame.xs("counterfactual", level="kind")
    assert list(cf["class"]) == ["yes", "no"] and (cf["c"] == "-").all() and not (cf["z"] == "-").any()
    np.testing.assert_allclose(cf["cost"], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(cf["z"].astype(float) - frame.xs("factual", level="kind")["z"].astype(float),
                               data.standardizer.scale[0], rtol=1e-5)  # one standard deviation, in its units
    with pytest.raises(ValueError, match="the explanation has 3 features but dataset 'custom' has 2"):
        e.to_frame(from_arrays(x[:, :2], np.arange(40) % 2))
