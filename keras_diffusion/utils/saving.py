"""Loading `.keras` files with an error that names a damaged file."""

import os
import zipfile

import keras


def check_keras_file(filepath, argument="filepath"):
    """Raises a clear error unless `filepath` is a readable `.keras` archive.

    Keras answers every unreadable file with "File not found", also when the
    file exists but is truncated or corrupt. This check names the file and
    what is wrong with it.

    Args:
        filepath: the path of a `.keras` file.
        argument: the argument name used in the error message.

    Raises:
        FileNotFoundError: when nothing exists at `filepath`.
        ValueError: when the file is not a complete `.keras` zip archive (it
            is truncated, its bytes are damaged, or it holds no `config.json`).

    Example:

    ```python
    check_keras_file("model.keras")
    ```
    """
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file at {argument}={path!r}")
    if os.path.isdir(path):
        raise ValueError(
            f"{argument}={path!r} is a directory, not a `.keras` file (a SavedModel "
            "export is loaded with tf.saved_model.load)"
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{argument}={path!r} is not a valid `.keras` archive ({os.path.getsize(path)} "
            "bytes, not a complete zip file: it may be truncated or not a Keras model)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(
            f"{argument}={path!r} is not a valid `.keras` archive: {error}"
        ) from error
    if damaged is not None:
        raise ValueError(
            f"{argument}={path!r} is not a valid `.keras` archive: its member "
            f"{damaged!r} is damaged (CRC mismatch)"
        )
    if "config.json" not in names:
        raise ValueError(
            f"{argument}={path!r} is not a valid `.keras` archive: it has no config.json "
            f"(members: {names[:5]})"
        )


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` with a clear error for a damaged file.

    Same arguments and result as `keras.saving.load_model`; a missing,
    truncated or corrupt file raises an error naming it (see
    `check_keras_file`) instead of Keras' "File not found".

    Args:
        filepath: the path of a `.keras` file.
        custom_objects: as in `keras.saving.load_model`.
        compile: as in `keras.saving.load_model`.
        safe_mode: as in `keras.saving.load_model`.

    Example:

    ```python
    model = keras_diffusion.load_model("mnist.keras")
    images = model.generate(8, seed=0)
    ```
    """
    if isinstance(filepath, (str, os.PathLike)) and os.fspath(filepath).endswith(".keras"):
        check_keras_file(filepath)
    return keras.saving.load_model(
        filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )
