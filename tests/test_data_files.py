"""nnlab.data's own data files (.npz, .csv): reading, task inference, label encoding, the
80/20 split, and a one-line DataError naming the file for every malformed file."""

import math
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnlab.data import (
    MAX_CLASSES,
    DataError,
    DataNotFoundError,
    encode_labels,
    infer_task,
    is_data_file,
    load_data_file,
    read_data_file,
    split,
)


def write_csv(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_a_csv_with_a_header_and_string_labels_gives_sorted_classes_and_a_seeded_split(tmp_path):
    features = [[0.5, -1.0], [2.0, 3.25], [-4.0, 0.0], [1.0, 1.0], [7.0, -2.5]]
    names = ["virginica", "setosa", "versicolor", "setosa", "virginica"]
    path = write_csv(tmp_path / "iris.csv", ["width,length,species"] + [f"{a},{b},{n}" for (a, b), n in zip(features, names)])
    own = load_data_file(path, seed=3)
    assert own.task == "classification"
    assert own.classes == ["setosa", "versicolor", "virginica"]
    # The reference: class indices written out by hand, split as data.split does.
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor([2, 0, 1, 0, 2])
    for got, expected in zip(own[:4], split(x, y, 0.8, 3)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert len(own.x_train) == 4 and len(own.x_test) == 1


def test_an_npz_of_whole_numbers_is_a_classification_over_its_sorted_values(tmp_path):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.array([7, 3, 9, 3, 7, 9, 9, 3, 7, 3])
    np.savez(tmp_path / "d.npz", x=x, y=y.reshape(10, 1))
    own = load_data_file(str(tmp_path / "d.npz"), seed=0)
    assert own.task == "classification" and own.classes == [3, 7, 9]
    indices = {3: 0, 7: 1, 9: 2}
    samples = torch.cat([own.x_train, own.x_test])
    labels = torch.cat([own.y_train, own.y_test])
    for sample, label in zip(samples, labels):
        row = int(sample[0]) // 2
        assert label.item() == indices[y[row]]


def test_an_npz_keeps_the_shape_of_its_samples(tmp_path):
    np.savez(tmp_path / "images.npz", x=np.zeros((5, 3, 4, 4), dtype=np.uint8), y=np.array([0, 1, 0, 1, 1]))
    x, labels = read_data_file(str(tmp_path / "images.npz"))
    assert x.shape == (5, 3, 4, 4) and x.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0, 1, 1]


@pytest.mark.parametrize(
    "labels, task",
    [
        (np.array(["b", "a"]), "classification"),
        (np.array([True, False]), "classification"),
        (np.array([0, 5, 2]), "classification"),
        (np.array([1.0, 2.0, -3.0]), "classification"),
        (np.arange(MAX_CLASSES), "classification"),
        (np.arange(MAX_CLASSES + 1), "regression"),
        (np.arange(MAX_CLASSES + 1, dtype=np.float64), "regression"),
        (np.array([0.5, 1.0, 2.0]), "regression"),
    ],
)
def test_infer_task(labels, task):
    assert infer_task(labels) == task


def test_the_task_can_be_overridden(tmp_path):
    path = write_csv(tmp_path / "d.csv", [f"{i},{i % 3}" for i in range(10)])
    own = load_data_file(path, task="regression")
    assert own.task == "regression" and own.classes is None
    assert own.y_train.dtype == torch.float32 and own.y_train.shape == (8, 1)
    assert set(torch.cat([own.y_train, own.y_test]).flatten().tolist()) == {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="task must be"):
        load_data_file(path, task="ranking")


@pytest.mark.parametrize(
    "labels, fragment",
    [(np.array([0.5, 1.0]), "fractions (0.5"), (np.array([4, 4, 4]), "every label is 4")],
)
def test_labels_that_cannot_be_classes_are_refused(labels, fragment):
    with pytest.raises(DataError) as error:
        encode_labels(labels, "classification", "f.csv")
    assert str(error.value).startswith("f.csv: ") and fragment in str(error.value)


def test_string_labels_cannot_be_regression_targets():
    with pytest.raises(DataError, match="a regression needs numbers"):
        encode_labels(np.array(["a", "b"]), "regression", "f.csv")


def _zip_without(tmp_path, name):
    path = tmp_path / "missing.npz"
    np.savez(path, **{name: np.zeros((4, 2))})
    return path


MALFORMED = {
    "wrong extension": ("data.txt", "1,2,3\n", "expected a .npz file"),
    "empty csv": ("empty.csv", "", "is empty"),
    "blank csv": ("blank.csv", "\n  \n", "is empty"),
    "header only": ("header.csv", "a,b,label\n", "holds no samples"),
    "one column": ("one.csv", "1\n2\n", "has 1 column"),
    "ragged rows": ("ragged.csv", "1,2,0\n3,4,1\n5,1\n", "line 3 has 2 columns, the first line 3"),
    "non-numeric feature": ("text.csv", "1,2,0\n3,abc,1\n", "line 2, column 2: 'abc' is not a finite number"),
    "empty feature": ("hole.csv", "1,2,0\n3,,1\n", "line 2, column 2: '' is not a finite number"),
    "nan feature": ("nan.csv", "1,2,0\n3,nan,1\n", "line 2, column 2: 'nan' is not a finite number"),
    "inf feature": ("inf.csv", "1,1e999,0\n3,4,1\n", "line 1, column 2: '1e999' is not a finite number"),
    "nan label": ("nanlabel.csv", "1,2,0\n3,4,nan\n5,6,1\n", "the label of sample 1 is nan"),
    "not utf-8": ("latin.csv", b"1,2,caf\xe9\n", "not a CSV text file"),
    "too few samples": ("two.csv", "1,2,0\n3,4,1\n", "holds 2 samples"),
    "not an npz": ("fake.npz", "x,y\n", "not a readable .npz archive"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_file_is_one_line_naming_the_file_and_the_problem(tmp_path, case):
    name, content, fragment = MALFORMED[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError) as error:
        load_data_file(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment in message


NPZ_MALFORMED = {
    "no y": (dict(x=np.zeros((4, 2))), "has no array y"),
    "neither": (dict(a=np.zeros(3)), "has no array x or y"),
    "x of strings": (dict(x=np.array([["a", "b"]] * 4), y=np.arange(4)), "x must be numbers"),
    "x of one dimension": (dict(x=np.zeros(4), y=np.arange(4)), "x must be numbers of shape (N, features...)"),
    "y too short": (dict(x=np.zeros((4, 2)), y=np.arange(3)), "y must be 4 numbers or strings"),
    "y of two columns": (dict(x=np.zeros((4, 2)), y=np.zeros((4, 2))), "y must be 4 numbers"),
    "nan in x": (dict(x=np.array([[0.0, 1.0], [2.0, np.nan], [1.0, 1.0]]), y=np.arange(3)), "sample 1 has a feature that is NaN"),
    "inf label": (dict(x=np.zeros((3, 2)), y=np.array([0.0, np.inf, 1.0])), "the label of sample 1 is inf"),
    "no samples": (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "holds no samples"),
}


@pytest.mark.parametrize("case", list(NPZ_MALFORMED))
def test_a_malformed_npz_is_one_line_naming_the_file_and_the_problem(tmp_path, case):
    arrays, fragment = NPZ_MALFORMED[case]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as error:
        load_data_file(str(path))
    assert str(error.value).startswith(f"{path}: ") and fragment in str(error.value)


def test_an_npz_holding_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([object(), 1], dtype=object), y=np.arange(2))
    with pytest.raises(DataError, match="not a readable .npz archive of plain arrays"):
        load_data_file(str(path))


def test_a_missing_file_and_what_counts_as_a_data_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such file"):
        load_data_file(str(tmp_path / "absent.csv"))
    assert is_data_file("a/b.CSV") and is_data_file("x.npz")
    assert not is_data_file("digits") and not is_data_file("x.npy")


def test_a_header_is_only_a_first_line_without_numbers(tmp_path):
    # A first line with some numbers is a sample with a typo, never dropped as a header.
    path = write_csv(tmp_path / "typo.csv", ["1,x,0", "3,4,1", "5,6,0"])
    with pytest.raises(DataError, match="line 1, column 2: 'x'"):
        read_data_file(path)


finite_or_special = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
)


@given(st.lists(st.lists(finite_or_special, min_size=3, max_size=3), min_size=1, max_size=6))
def test_csv_features_round_trip_and_every_special_value_is_refused(rows):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_csv(Path(folder) / "d.csv", [",".join(repr(v) for v in row) + ",1" for row in rows])
        special = [(r, c) for r, row in enumerate(rows) for c, v in enumerate(row) if not math.isfinite(v)]
        if special:
            line, column = special[0]
            with pytest.raises(DataError, match=f"line {line + 1}, column {column + 1}: "):
                read_data_file(path)
            return
        x, labels = read_data_file(path)
    assert torch.equal(x, torch.tensor(rows, dtype=torch.float32))
    assert labels.tolist() == [1.0] * len(rows)


def test_the_documented_example_of_training_on_your_own_data_runs(tmp_path, monkeypatch):
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    section = page.split("## Your own data in a file", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/training.md", "exec"), namespace)
    assert namespace["own"].classes == ["down", "up"]
    assert len(namespace["fit"].test_loss) == 5
