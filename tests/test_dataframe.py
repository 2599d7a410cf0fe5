"""`from_dataframe`: a mixed-type pandas table becomes the Dataset `from_arrays` builds from the hand-encoded
arrays; missing values, unknown names and unusable columns raise errors that name the columns."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from ctrain.data import from_arrays, from_dataframe

pd = pytest.importorskip("pandas")

N = 40


def _frame() -> "pd.DataFrame":
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "age": rng.integers(18, 70, N),                                       # int64
        "income": rng.normal(3000.0, 800.0, N),                               # float64
        "job": np.array(["tech", "admin", "sales", "admin"] * (N // 4)),      # strings, sorted to admin, sales, tech
        # A Categorical keeps its own category order (not alphabetical) and its unused category "phd".
        "edu": pd.Categorical(["low", "high", "mid", "low", "mid"] * (N // 5),
                              categories=["low", "mid", "high", "phd"], ordered=True),
        "owner": np.array([True, False, False, True, False] * (N // 5)),       # bool
        "approved": np.array(["yes", "no"] * (N // 2)),                        # string target
    })


def _hand_encoded(df):
    """Returns (x (N, 11), names, groups) encoded by hand, in the frame's column order."""
    def onehot(values, levels):
        return np.stack([np.asarray(values) == level for level in levels], axis=1).astype(np.float64)

    jobs, edus = ["admin", "sales", "tech"], ["low", "mid", "high", "phd"]
    x = np.concatenate([df["age"].to_numpy(np.float64)[:, None], df["income"].to_numpy()[:, None],
                        onehot(df["job"], jobs), onehot(np.asarray(df["edu"], dtype=object), edus),
                        onehot(df["owner"], [False, True])], axis=1)
    groups = {"job": [f"job={j}" for j in jobs], "edu": [f"edu={e}" for e in edus],
              "owner": ["owner=False", "owner=True"]}
    return x, ["age", "income", *groups["job"], *groups["edu"], *groups["owner"]], groups


def _assert_same_dataset(a, b):
    for field in dataclasses.fields(a):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=field.name)
            assert va.dtype == vb.dtype, field.name
        elif field.name == "standardizer":
            np.testing.assert_array_equal(va.mean, vb.mean)
            np.testing.assert_array_equal(va.scale, vb.scale)
        else:
            assert va == vb, field.name


def test_a_mixed_frame_equals_from_arrays_on_the_hand_encoded_arrays():
    df = _frame()
    kwargs = dict(immutable=["edu", "owner"], increase=["age"], bounds={"income": (0.0, 10_000.0), "age": (0, 120)},
                  val_fraction=0.2,
                  seed=3, name="loans")
    got = from_dataframe(df, "approved", **kwargs)
    x, names, groups = _hand_encoded(df)
    # the integer column age is an integer feature; the frame's layout is what from_arrays does not have
    expected = from_arrays(x, df["approved"].to_numpy(), feature_names=names, categorical=groups, integer=["age"],
                           **kwargs)
    assert got.table is not None and expected.table is None
    _assert_same_dataset(dataclasses.replace(got, table=None), expected)
    assert got.schema.names == tuple(names)
    assert got.class_names == ("no", "yes")  # the string target, in sorted order as from_arrays maps it


def test_a_categorical_column_name_constrains_its_whole_group():
    with pytest.warns(UserWarning, match="'income' is decrease-only with no lower bound"):
        data = from_dataframe(_frame(), "approved", immutable=["job"], decrease=["income"])
    mutability = {f.name: f.mutability for f in data.schema.features}
    assert [mutability[f"job={j}"] for j in ("admin", "sales", "tech")] == ["immutable"] * 3
    assert mutability["income"] == "decrease"
    assert mutability["edu=low"] == mutability["age"] == "free"
    assert list(data.schema.groups["job"]) == [2, 3, 4]
    assert data.schema.features[2].kind == "categorical" and data.schema.features[0].kind == "continuous"


def test_listed_numeric_columns_become_groups_and_other_targets_work():
    df = _frame().assign(region=[1, 2, 3, 2] * (N // 4), approved=pd.Categorical(["b", "a"] * (N // 2)))
    data = from_dataframe(df, "approved", categorical=["region"])
    assert [n for n in data.schema.names if n.startswith("region")] == ["region=1", "region=2", "region=3"]
    assert data.class_names == ("a", "b")
    bool_target = from_dataframe(df.drop(columns="approved"), "owner")
    assert bool_target.class_names == ("False", "True")


def test_missing_values_raise_naming_columns_and_counts():
    df = _frame()
    df.loc[[1, 5], "income"] = np.nan
    df["job"] = df["job"].astype(object)
    df.loc[7, "job"] = None
    df.loc[9, "approved"] = None
    with pytest.raises(ValueError, match=r"'income': 2, 'job': 1, 'approved': 1.*does not impute") as err:
        from_dataframe(df, "approved")
    assert "age" not in str(err.value)
    # Missing values in a column that is not used (dropped first) do not matter.
    assert from_dataframe(df.drop(index=[1, 5, 7, 9]), "approved").schema.width == 11


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(target="approve"), ValueError, r"target 'approve' is not a column; the columns are \['age'"),
    (dict(immutable=["agee", "job"]), ValueError, r"unknown column name\(s\) \['agee'\] in immutable"),
    (dict(increase=["wage"]), ValueError, r"unknown column name\(s\) \['wage'\] in increase"),
    (dict(bounds={"salary": (0, 1)}), ValueError, r"unknown column name\(s\) \['salary'\] in bounds"),
    (dict(categorical=["zip"]), ValueError, r"unknown column name\(s\) \['zip'\] in categorical"),
    (dict(immutable=["approved"]), ValueError, r"names the target column 'approved'"),
    (dict(increase=["edu"]), ValueError, r"increase names categorical column\(s\) or categories \['edu'\]"),
    (dict(bounds={"owner": (0, 1)}), ValueError, r"bounds names categorical column\(s\)"),
    (dict(immutable="age"), TypeError, r"write \['age'\]"),
])
def test_bad_names_raise_and_name_them(kwargs, error, match):
    kwargs = {"target": "approved", **kwargs}
    with pytest.raises(error, match=match):
        from_dataframe(_frame(), **kwargs)


def test_unusable_columns_and_inputs_raise():
    df = _frame()
    with pytest.raises(ValueError, match=r"'when': 'datetime64.*neither numbers nor categories"):
        from_dataframe(df.assign(when=pd.Timestamp("2026-01-01")), "approved")
    with pytest.raises(ValueError, match=r"categorical column 'country' holds a single category \['FR'\]"):
        from_dataframe(df.assign(country="FR"), "approved")
    with pytest.raises(TypeError, match="takes a pandas DataFrame, got dict"):
        from_dataframe(df.to_dict(), "approved")
    with pytest.raises(ValueError, match="no feature columns"):
        from_dataframe(df[["approved"]], "approved")


def test_without_pandas_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(ImportError, match=r"pip install ctrain\[pandas\]"):
        from_dataframe(object(), "y")


def test_importing_ctrain_does_not_import_pandas():
    code = "import sys, ctrain, ctrain.data; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         check=True)  # only stops a hung import
    assert out.stdout.strip() == "False"
