"""The builtin digits dataset: a fixed stratified split, shapes for both architectures, errors."""

from __future__ import annotations

import numpy as np
import pytest

from prunescope.models.registry import create_model
from prunescope.workers.datasets import as_model_input, check_model_fits, load_builtin, load_dataset
from prunescope.workers.jobspec import DatasetRef, JobInputError

DIGITS = DatasetRef(name="digits", source="builtin", builtin_name="digits")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS)


def test_digits_split_shapes_types_and_range(digits):
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.class_names == tuple("0123456789")


def test_split_is_stratified_and_fixed(digits):
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    share = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(share - 0.25) < 0.01)
    again = load_dataset(DIGITS)
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    np.testing.assert_array_equal(again.y_train, digits.y_train)


def test_examples_reshape_for_each_architecture(digits):
    assert as_model_input(digits.x_test, create_model("mlp").input_shape).shape == (450, 64)
    assert as_model_input(digits.x_test, create_model("cnn_small").input_shape).shape == (
        450, 1, 8, 8
    )
    with pytest.raises(JobInputError, match="64 values"):
        as_model_input(digits.x_test, create_model("mlp", in_features=32).input_shape)


def test_a_model_with_the_wrong_number_of_classes_is_refused(digits):
    check_model_fits(create_model("cnn_small"), digits)
    with pytest.raises(JobInputError, match="num_classes=10"):
        check_model_fits(create_model("cnn_small", num_classes=7), digits)


@pytest.mark.parametrize(
    ("ref", "word"),
    [
        (DatasetRef(name="x", source="builtin", builtin_name="imagenet"), "digits"),
        (DatasetRef(name="x", source="builtin"), "digits"),
        (DatasetRef(name="mine", source="upload", path="/nonexistent/x.npz"), "cannot be read"),
        (DatasetRef(name="mine", source="upload"), "no stored file"),
        (DatasetRef(name="x", source="ftp"), "'upload'"),
    ],
)
def test_unknown_datasets_are_refused(ref, word):
    with pytest.raises(JobInputError, match=word):
        load_dataset(ref)


def test_augmented_digits_are_shifted_noisy_copies_of_their_own_split() -> None:
    from prunescope.workers.datasets import AUGMENTED_NOISE, AUGMENTED_TEST_COPIES

    base, big = load_builtin("digits"), load_builtin("digits_augmented")
    assert big.num_test == AUGMENTED_TEST_COPIES * base.num_test >= 20_000
    assert big.x_test.dtype == np.float32 and big.x_test.min() >= 0 and big.x_test.max() <= 1
    # Every noise-free copy is its source test image moved by at most one pixel.
    clean = np.flatnonzero(big.groups_test == "noise 0.0")
    assert clean.size > 0.25 * big.num_test
    for row in clean[:200]:
        source = int(big.ids_test[row].split("-")[0].removeprefix("test"))
        assert big.y_test[row] == base.y_test[source]
        padded = np.pad(base.x_test[source, 0], 1)
        crops = [padded[1 + dy : 9 + dy, 1 + dx : 9 + dx] for dy in (-1, 0, 1)
                 for dx in (-1, 0, 1)]
        assert any(np.array_equal(big.x_test[row, 0], c) for c in crops)
    assert set(np.unique(big.groups_test)) == {f"noise {s}" for s in AUGMENTED_NOISE}
    # No test image leaks into training: training copies come from training images only.
    assert np.bincount(big.y_train).tolist() == (10 * np.bincount(base.y_train)).tolist()
    assert len(set(big.ids_test)) == big.num_test
