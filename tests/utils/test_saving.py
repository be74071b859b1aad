"""A damaged `.keras` file gives an error that names it."""

import os

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.utils.saving import check_keras_file


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saving") / "small.keras")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(path)
    return path, model


@pytest.mark.jax
def test_a_good_file_loads(saved):
    path, model = saved
    restored = kd.load_model(path)
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.jax
def test_truncated_file_is_named(saved, tmp_path):
    path, _ = saved
    truncated = str(tmp_path / "truncated.keras")
    with open(path, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.keras.*not a valid `.keras` archive"):
        kd.load_model(truncated)


@pytest.mark.jax
def test_flipped_bytes_are_found(saved, tmp_path):
    path, _ = saved
    damaged = str(tmp_path / "damaged.keras")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    # The first member's data starts after its 30-byte header and its name.
    name_length = int.from_bytes(data[26:28], "little")
    extra_length = int.from_bytes(data[28:30], "little")
    start = 30 + name_length + extra_length
    data[start + 5] ^= 0xFF
    with open(damaged, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError, match="damaged.keras.*not a valid `.keras` archive"):
        kd.load_model(damaged)


@pytest.mark.jax
def test_other_files_and_missing_ones(tmp_path):
    text = str(tmp_path / "notes.keras")
    with open(text, "w") as f:
        f.write("not a model")
    with pytest.raises(ValueError, match="notes.keras.*not a valid"):
        kd.load_model(text)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        kd.load_model(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="is a directory"):
        check_keras_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.vae="):
        check_keras_file(os.path.join(str(tmp_path), "vae.keras"), "model.vae")
