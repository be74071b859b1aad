"""Image features for FID and KID, and the cached real-data statistics.

The published protocol (Heusel et al., 2017; Binkowski et al., 2018) embeds
images with InceptionV3's pool3 layer (2048 features, global average pool of
the last mixed block) at 299x299. Images are 8-bit RGB, resized bilinearly to
299x299 and scaled to [-1, 1] (`keras.applications.inception_v3
.preprocess_input`). This module follows it for images in the library's
convention (channels-last floats in [-1, 1]): they are mapped to [0, 255],
rounded to 8 bits as saved PNGs are, resized, grayscale is repeated to RGB,
and InceptionV3's own preprocessing is applied.

The extractor is pluggable: any Keras model (for example a small MNIST
classifier without its last layer) or callable mapping images in [-1, 1] to
features, or `"identity"` when the inputs already are feature vectors.
"""

import os
import warnings

import keras
import numpy as np
from keras import ops

INCEPTION_IMAGE_SIZE = (299, 299)


def inception_v3(weights="imagenet", image_size=INCEPTION_IMAGE_SIZE):
    """InceptionV3 up to pool3: 2048 features per image.

    Args:
        weights: "imagenet" (downloaded by Keras on first use; needs network
            access or a cached file in ~/.keras/models) or `None` (random
            weights, for tests).
        image_size: input size; 299x299 for the published protocol. At least
            75x75.

    Returns:
        A `keras.Model` mapping `[batch, h, w, 3]` images preprocessed with
        `inception_v3.preprocess_input` to `[batch, 2048]`.
    """
    try:
        return keras.applications.InceptionV3(
            weights=weights,
            include_top=False,
            pooling="avg",
            input_shape=tuple(image_size) + (3,),
        )
    except Exception as error:  # No network: say what to do.
        raise RuntimeError(
            "Could not build InceptionV3 with weights="
            f"{weights!r}: {error}. The ImageNet weights are downloaded by "
            "Keras on first use; without network access copy "
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 to "
            "~/.keras/models/, or pass another `feature_extractor` (any Keras "
            "model mapping images in [-1, 1] to features)."
        ) from error


class FeatureExtractor:
    """Maps images in [-1, 1] (channels-last) to feature vectors `[batch, d]`.

    Args:
        model: "inception" (InceptionV3 pool3 with ImageNet weights, the
            published protocol), "identity" or `None` (inputs are flattened:
            they already are features), a `keras.Model`, or any callable
            mapping a batch of images to a batch of features. A model's output
            is flattened to `[batch, d]`.
        image_size: `(height, width)` the images are resized to (bilinear)
            before the model. Default: 299x299 for "inception", the model's
            input size when it defines one, else no resize.
        preprocessing: "inception" (InceptionV3's `preprocess_input` of the
            images' [0, 255] form, which is the images clipped to [-1, 1]) or
            `None` (the model takes the images as they are). Default:
            "inception" for "inception", else `None`.
        quantize: round images to 8 bits before the model, as the published
            protocol evaluates saved PNGs. Default: True for "inception",
            else False.
        batch_size: the batch size `extract` runs the model with.

    Example:
    >>> extractor = FeatureExtractor(classifier_trunk)  # any Keras model
    >>> features = extractor.extract(images)  # numpy [N, d] float64

    References:
        Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to
        a Local Nash Equilibrium, 2017 (FID). Szegedy et al., Rethinking the
        Inception Architecture for Computer Vision, 2016.
    """

    def __init__(
        self,
        model="inception",
        image_size="auto",
        preprocessing="auto",
        quantize="auto",
        batch_size=50,
    ):
        is_inception = isinstance(model, str) and model == "inception"
        if isinstance(model, str) and model not in ("inception", "identity"):
            raise ValueError(
                "`model` must be 'inception', 'identity', a keras.Model or a "
                f"callable, received model={model!r}"
            )
        if model is not None and not isinstance(model, str) and not callable(model):
            raise ValueError(
                "`model` must be 'inception', 'identity', a keras.Model or a "
                f"callable, received model={model!r}"
            )
        self.identity = model is None or (isinstance(model, str) and model == "identity")
        if image_size == "auto":
            if is_inception:
                image_size = INCEPTION_IMAGE_SIZE
            else:
                image_size = _model_image_size(model)
        if image_size is not None:
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) < 1:
                raise ValueError(
                    "`image_size` must be (height, width), received "
                    f"image_size={image_size}"
                )
        if preprocessing == "auto":
            preprocessing = "inception" if is_inception else None
        if preprocessing not in ("inception", None):
            raise ValueError(
                "`preprocessing` must be 'inception' or None, received "
                f"preprocessing={preprocessing!r}"
            )
        if quantize == "auto":
            quantize = is_inception
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, received batch_size={batch_size}")
        self.image_size = image_size
        self.preprocessing = preprocessing
        self.quantize = bool(quantize)
        self.batch_size = batch_size
        self.name = "inception_v3" if is_inception else (
            "identity" if self.identity else getattr(model, "name", type(model).__name__)
        )
        self._model = None if self.identity else model

    @property
    def model(self):
        """The wrapped model; InceptionV3 is built on first use."""
        if isinstance(self._model, str):
            self._model = inception_v3(image_size=self.image_size)
        return self._model

    def _channels(self):
        if self.preprocessing == "inception" or isinstance(self._model, str):
            return 3
        shape = getattr(self._model, "input_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4 and shape[-1] is not None:
            return int(shape[-1])
        return None

    def __call__(self, images):
        """Features of one batch: a float32 tensor `[batch, d]`."""
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        if self.identity:
            return ops.reshape(images, (ops.shape(images)[0], -1))
        if len(images.shape) != 4:
            raise ValueError(
                "`images` must have shape [batch, height, width, channels], "
                f"received shape {tuple(images.shape)}"
            )
        channels = self._channels()
        if channels is not None and images.shape[-1] != channels:
            if images.shape[-1] == 1:  # Grayscale to RGB (or to C channels).
                images = ops.repeat(images, channels, axis=-1)
            else:
                raise ValueError(
                    f"The feature extractor {self.name!r} takes {channels} "
                    f"channels, received images of shape {tuple(images.shape)}"
                )
        if self.preprocessing == "inception" or self.quantize:
            images = ops.clip(images, -1.0, 1.0)
        if self.quantize:  # 8 bits, as saved PNGs: [0, 255] integers.
            images = ops.round((images + 1.0) * 127.5) / 127.5 - 1.0
        if self.image_size is not None and tuple(images.shape[1:3]) != self.image_size:
            images = ops.image.resize(images, self.image_size, interpolation="bilinear")
        # "inception": inception_v3.preprocess_input maps [0, 255] to
        # x / 127.5 - 1, which is where images in [-1, 1] already are, and
        # bilinear resizing commutes with that affine map.
        features = self.model(images)
        return ops.reshape(ops.cast(features, "float32"), (ops.shape(features)[0], -1))

    def extract(self, images):
        """Features of all `images` as a float64 numpy array `[N, d]`.

        Args:
            images: an array `[N, ...]`, or an iterable of batches (a
                `tf.data.Dataset` yielding images or `(images, labels)`).
        """
        out = []
        for batch in iterate_batches(images, self.batch_size):
            out.append(np.asarray(ops.convert_to_numpy(self(batch)), np.float64))
        if not out:
            raise ValueError("`images` is empty: no features to compute.")
        return np.concatenate(out, axis=0)


def _model_image_size(model):
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and None not in shape[1:3]:
        return tuple(int(s) for s in shape[1:3])
    return None


def get(identifier):
    """A `FeatureExtractor` from a name, a model, a callable or an extractor."""
    if isinstance(identifier, FeatureExtractor):
        return identifier
    return FeatureExtractor(identifier)


def iterate_batches(images, batch_size):
    """Yields batches from an array or an iterable of batches.

    An element of an iterable that is a tuple or list contributes its first
    entry (the images of `(images, labels)`).
    """
    if hasattr(images, "shape"):  # One array or tensor [N, ...].
        images = np.asarray(ops.convert_to_numpy(images))
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if isinstance(batch, dict):
            raise ValueError(
                "Batches of images must be arrays or (images, labels) tuples, "
                f"received a dict with keys {sorted(batch)}"
            )
        yield batch


# --- real-data statistics, computed once and cached ------------------------
def compute_statistics(images, feature_extractor="inception", path=None, keep_features=True):
    """Features, mean and covariance of a set of (real) images.

    Args:
        images: an array `[N, ...]` of images in [-1, 1] or an iterable of
            batches (a `tf.data.Dataset`).
        feature_extractor: anything `FeatureExtractor` takes, or one.
        path: if given, a `.npz` file the statistics are written to.
        keep_features: also keep (and save) the features themselves, which
            KID needs.

    Returns:
        A dict with "mu" `[d]`, "sigma" `[d, d]` (unbiased covariance),
        "num_samples", "image_shape" (one image's shape, `[]` for features),
        "extractor" (its name) and, if `keep_features`, "features" `[N, d]`.
    """
    extractor = get(feature_extractor)
    features = []
    image_shape = None
    for batch in iterate_batches(images, extractor.batch_size):
        shape = tuple(batch.shape[1:])
        if image_shape is None:
            image_shape = shape
        elif shape != image_shape:
            raise ValueError(
                f"All `images` must have the same shape; received a batch of "
                f"shape {shape} after {image_shape}"
            )
        features.append(np.asarray(ops.convert_to_numpy(extractor(batch)), np.float64))
    if not features:
        raise ValueError("`images` is empty: no statistics to compute.")
    features = np.concatenate(features, axis=0)
    stats = {
        "mu": features.mean(axis=0),
        "sigma": np.cov(features, rowvar=False).reshape(features.shape[1], -1),
        "num_samples": np.asarray(len(features)),
        "image_shape": np.asarray(image_shape, np.int64),
        "extractor": np.asarray(extractor.name),
    }
    if keep_features:
        stats["features"] = features
    if path is not None:
        save_statistics(path, stats)
    return stats


def save_statistics(path, stats):
    """Writes statistics from `compute_statistics` to a `.npz` file."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in stats.items()})


def load_statistics(path):
    """Reads statistics written by `compute_statistics(..., path=...)`.

    Raises:
        FileNotFoundError: if `path` does not exist, saying how to create it.
        ValueError: if the file lacks "mu" or "sigma".
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No real-data statistics file at real_statistics={path!r}. Compute "
            "it once with keras_diffusion.metrics.compute_statistics(real_images, "
            f"feature_extractor=..., path={path!r}) (or "
            "load_or_compute_statistics) and pass that path."
        )
    with np.load(path, allow_pickle=False) as data:
        stats = {k: data[k] for k in data.files}
    for key in ("mu", "sigma"):
        if key not in stats:
            raise ValueError(
                f"The statistics file real_statistics={path!r} has no {key!r} "
                f"array (found {sorted(stats)}); was it written by compute_statistics?"
            )
    stats["extractor"] = str(stats.get("extractor", "unknown"))
    stats["num_samples"] = int(stats.get("num_samples", 0))
    return stats


def load_or_compute_statistics(path, images, feature_extractor="inception"):
    """Loads the statistics cached at `path`, computing and caching them once.

    `images` may be a function returning the images (or a dataset), so that
    the real data are only loaded when the cache is missing.
    """
    if os.path.exists(os.fspath(path)):
        return load_statistics(path)
    if callable(images) and not hasattr(images, "shape"):
        images = images()
    return compute_statistics(images, feature_extractor, path=path)


def check_image_shapes(expected, received, expected_name, received_name):
    """Raises when two image shapes (without the batch axis) differ."""
    expected, received = tuple(expected), tuple(received)
    if expected != received:
        what = "channel count" if expected[:-1] == received[:-1] else "image size"
        raise ValueError(
            f"Mismatched {what}: `{received_name}` has per-image shape "
            f"{received}, but `{expected_name}` has per-image shape {expected}."
        )


def warn_few_samples(num_samples, dim, name):
    """Warns when a covariance from `num_samples` < `dim` samples is singular."""
    if num_samples < dim:
        warnings.warn(
            f"FID: {name} has num_samples={num_samples}, fewer than the feature "
            f"dimension {dim}: its covariance is singular, and the FID is "
            "biased and noisy (the protocol uses at least 10,000 samples; use "
            "at least the feature dimension).",
            stacklevel=3,
        )


class FeatureMetric(keras.metrics.Metric):
    """Shared part of FID and KID: features of real and generated images.

    `update_state(real_images, generated_images)` embeds each batch with the
    feature extractor and hands the features to `_update_features(side,
    features)`; shapes are checked against earlier batches, the other side
    and the cached statistics.

    Args:
        feature_extractor: see `FeatureExtractor` ("inception", "identity",
            a Keras model, a callable, or a `FeatureExtractor`).
        real_statistics: `None` (real images come through `update_state`),
            the path of a `.npz` file from `compute_statistics`, or the dict
            it returns.
    """

    def __init__(self, feature_extractor="inception", real_statistics=None, **kwargs):
        super().__init__(**kwargs)
        self._extractor_config = feature_extractor
        self.feature_extractor = get(feature_extractor)
        self.real_statistics_path = None
        self.real_statistics = None
        if isinstance(real_statistics, (str, os.PathLike)):
            self.real_statistics_path = os.fspath(real_statistics)
            self.real_statistics = load_statistics(real_statistics)
        elif isinstance(real_statistics, dict):
            self.real_statistics = dict(real_statistics)
        elif real_statistics is not None:
            raise ValueError(
                "`real_statistics` must be None, a .npz path or a dict from "
                f"compute_statistics, received real_statistics={real_statistics!r}"
            )
        self._image_shapes = {}
        if self.real_statistics is not None and "image_shape" in self.real_statistics:
            self._image_shapes["real_images"] = tuple(
                int(s) for s in np.asarray(self.real_statistics["image_shape"])
            )

    def update_state(self, real_images=None, generated_images=None, sample_weight=None):
        """Adds a batch of real and/or generated images in [-1, 1].

        Args:
            real_images: `[batch, h, w, c]` real images (or feature vectors
                with the identity extractor), or `None`. Must be `None` when
                the real statistics come from a file.
            generated_images: `[batch, h, w, c]` generated images, or `None`.
            sample_weight: not supported (must be `None`).
        """
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} takes no `sample_weight`.")
        if real_images is None and generated_images is None:
            raise ValueError(
                "Pass `real_images`, `generated_images` or both, received neither."
            )
        if real_images is not None and self.real_statistics is not None:
            raise ValueError(
                f"{type(self).__name__} has fixed `real_statistics` "
                f"({self.real_statistics_path or 'a dict'}); received "
                "`real_images` too. Pass only `generated_images`."
            )
        for name, images in (("real_images", real_images), ("generated_images", generated_images)):
            if images is None:
                continue
            images = ops.convert_to_tensor(images)
            if len(images.shape) < 2:
                raise ValueError(
                    f"`{name}` must have shape [batch, ...], received shape "
                    f"{tuple(images.shape)}"
                )
            shape = tuple(images.shape[1:])
            for other in ("real_images", "generated_images"):
                if other in self._image_shapes:
                    check_image_shapes(self._image_shapes[other], shape, other, name)
            self._image_shapes[name] = shape
            features = self.feature_extractor(images)
            self._update_features(name.split("_")[0], features)

    def _update_features(self, side, features):
        raise NotImplementedError

    def _reset_shapes(self):
        self._image_shapes = {
            k: v for k, v in self._image_shapes.items() if k == "real_images"
            and self.real_statistics is not None
        }

    def get_config(self):
        config = super().get_config()
        extractor = self._extractor_config
        if isinstance(extractor, keras.Model):
            extractor = keras.saving.serialize_keras_object(extractor)
        elif not (extractor is None or isinstance(extractor, str)):
            extractor = None  # A callable or FeatureExtractor: not serializable.
        config.update(
            {"feature_extractor": extractor, "real_statistics": self.real_statistics_path}
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("feature_extractor"), dict):
            config["feature_extractor"] = keras.saving.deserialize_keras_object(
                config["feature_extractor"]
            )
        return cls(**config)


def numpy_result(compute, inputs):
    """Runs numpy `compute(*inputs)` eagerly, or via tf.numpy_function in a graph."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            values = [getattr(x, "value", x) for x in inputs]
            return tf.numpy_function(
                lambda *a: np.float32(compute(*a)), values, tf.float32
            )
    inputs = [np.asarray(ops.convert_to_numpy(getattr(x, "value", x))) for x in inputs]
    return ops.convert_to_tensor(np.float32(compute(*inputs)))
