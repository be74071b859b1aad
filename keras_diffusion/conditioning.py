"""Conditions: batch parsing, the null condition, dropout and validation.

One set of rules for every path that takes conditions (`fit`, `evaluate`,
`generate`, img2img, inpainting and the SavedModel):

- A data batch is `images`, `(images,)`, `(images, labels)` or a dict with
  `"images"` (or cached `"latents"`) and optional `"labels"`, `"text"`,
  `"context"`, `"condition"` (`parse_batch`).
- `labels` are integers in `[0, num_classes)`; `num_classes` itself is the
  null label of classifier-free guidance. Float labels are accepted only
  when they hold whole numbers. A single label (a scalar or length 1) is
  repeated over the batch.
- `text` is a list of non-empty prompts that fit the text encoder; a single
  prompt is repeated over the batch.
- `condition` is an image condition `(N, H, W, C)` of the model's
  `condition_shape` (after the codec's encoding, for latent models).
- `control` is a ControlNet's control image `(N, H', W', C')` of the
  model's `control_shape`. It is in `KEPT_KEYS`: condition dropout and the
  unconditional half of classifier-free guidance keep it (Zhang et al.,
  2023: the prompt is dropped, the control stays).
- The null condition (`ConditionSpec.null`) is the null label, the empty
  prompt's context (or zeros for a precomputed context) and a zero image
  condition.
"""

import re

import keras
import numpy as np
from keras import ops

from keras_diffusion.utils.asserts import runtime_check

DATA_KEYS = ("images", "latents", "labels", "text", "context", "condition", "control")
CONDITION_KEYS = ("labels", "context", "condition", "control")
# Conditions that dropout and the null half of guidance keep as given.
KEPT_KEYS = ("control",)
_PUNCTUATION = r"[!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~']"


def parse_batch(data):
    """A data batch -> a dict with "images" (or "latents") and its conditions.

    Args:
        data: images; a tuple `(images,)` / `(images, labels)` /
            `(images, labels, sample_weight)` (Keras' convention; a sample
            weight is not supported and must be None); or a dict of
            `DATA_KEYS`.

    Returns:
        A dict of the batch's tensors.
    """
    if isinstance(data, dict):
        unknown = sorted(k for k in data if k not in DATA_KEYS)
        has_x = ("images" in data) + ("latents" in data)
        if has_x != 1 or unknown:
            raise ValueError(
                "A dict data batch needs exactly one of the keys 'images' or "
                f"'latents' and may have {list(CONDITION_KEYS) + ['text']}; received "
                f"keys {sorted(data)}"
            )
        return {k: v for k, v in data.items() if v is not None}
    if isinstance(data, (list, tuple)):
        if len(data) == 0 or len(data) > 3:
            raise ValueError(
                "A data batch is images, (images, labels) or a dict; received a "
                f"{type(data).__name__} of length {len(data)}"
            )
        if len(data) == 3 and data[2] is not None:
            raise ValueError(
                "Diffusion models do not take a sample weight; received a batch "
                "(images, labels, sample_weight) with a sample_weight"
            )
        if isinstance(data[0], dict):
            if len(data) > 1 and data[1] is not None:
                raise ValueError(
                    "A dict data batch carries its labels under 'labels'; received "
                    "(dict, labels)"
                )
            return parse_batch(data[0])
        out = {"images": data[0]}
        if len(data) > 1 and data[1] is not None:
            out["labels"] = data[1]
        return out
    return {"images": data}


def _count(current, new, name):
    if current is not None and new != current and new != 1:
        raise ValueError(f"`{name}` has {new} entries for {current} samples")
    return current if current is not None else new


class ConditionSpec:
    """What a model is conditioned on, and the checks of its conditions.

    Args:
        num_classes: number of classes (labels in `[0, num_classes)`), or None.
        text_encoder: the layer mapping prompts to a context, or None.
        context_shape: `(L, D)` of the context, or None.
        condition_shape: the image condition's shape `(H, W, C)`, or None.
        control_shape: a ControlNet's control image shape `(H, W, C)`, or None.

    Example:
    >>> spec = ConditionSpec(num_classes=10)
    >>> spec.check_labels(3, num=4)
    array([3, 3, 3, 3], dtype=int32)
    """

    def __init__(self, num_classes=None, text_encoder=None, context_shape=None,
                 condition_shape=None, control_shape=None):
        self.num_classes = None if num_classes is None else int(num_classes)
        self.text_encoder = text_encoder
        self.context_shape = None if context_shape is None else tuple(context_shape)
        self.condition_shape = None if condition_shape is None else tuple(condition_shape)
        self.control_shape = None if control_shape is None else tuple(control_shape)

    @property
    def has_context(self):
        return self.text_encoder is not None or self.context_shape is not None

    @property
    def is_conditional(self):
        return (
            self.num_classes is not None
            or self.has_context
            or self.condition_shape is not None
        )

    # --- the null condition ---------------------------------------------------
    def null(self, batch, empty_context=None):
        """The "no condition" inputs of the denoiser for a batch.

        Args:
            batch: the batch size (an int or a scalar tensor).
            empty_context: the empty prompt's context `(1, L, D)` for text
                models (zeros are used for a precomputed context).
        """
        cond = {}
        if self.num_classes is not None:
            cond["labels"] = ops.full((batch,), self.num_classes, "int32")
        if self.has_context:
            if empty_context is not None:
                cond["context"] = ops.repeat(ops.cast(empty_context, "float32"), batch, axis=0)
            else:
                cond["context"] = ops.zeros((batch,) + self.context_shape, "float32")
        if self.condition_shape is not None:
            cond["condition"] = ops.zeros((batch,) + self.condition_shape, "float32")
        if self.control_shape is not None:
            # A placeholder: dropout and guidance keep the given control.
            cond["control"] = ops.zeros((batch,) + self.control_shape, "float32")
        return cond

    @staticmethod
    def drop(cond, null, rate, seed):
        """Classifier-free guidance dropout: each example's condition becomes
        the null condition with probability `rate`."""
        if not cond or rate == 0.0:
            return cond
        first = next(iter(cond.values()))
        batch = ops.shape(first)[0]
        drop = keras.random.uniform((batch,), seed=seed) < rate
        out = {}
        for key, value in cond.items():
            if key in KEPT_KEYS:
                out[key] = value
                continue
            mask = ops.reshape(drop, (-1,) + (1,) * (len(value.shape) - 1))
            out[key] = ops.where(mask, ops.cast(null[key], value.dtype), value)
        return out

    # --- checks of concrete inputs (generate, img2img, inpaint) -------------
    def check_labels(self, labels, num=None):
        """Labels as int32 numpy `(num,)`; a single label is repeated."""
        if self.num_classes is None:
            raise ValueError(
                "`labels` were given but the model is unconditional (num_classes=None)"
            )
        if isinstance(labels, (str, bytes)):
            raise ValueError(f"`labels` must be integers, received labels={labels!r}")
        values = np.asarray(ops.convert_to_numpy(labels) if ops.is_tensor(labels) else labels)
        if values.ndim == 0:
            values = values[None]
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"`labels` must be a 1-D sequence of ints, received shape {values.shape}"
            )
        if values.dtype == bool or values.dtype.kind not in "iuf":
            raise ValueError(
                f"`labels` must be integers, received {values.dtype} labels {values.tolist()[:8]}"
            )
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                raise ValueError(
                    "`labels` must be whole numbers (class indices), received "
                    f"labels={values.tolist()[:8]}"
                )
        if values.min() < 0 or values.max() >= self.num_classes:
            raise ValueError(
                f"`labels` must be in [0, {self.num_classes}) (num_classes="
                f"{self.num_classes}), received values in [{values.min()}, {values.max()}]"
            )
        values = values.astype("int32")
        if num is not None and len(values) != num:
            if len(values) != 1:
                raise ValueError(f"`labels` has {len(values)} entries for {num} samples")
            values = np.repeat(values, num)
        return values

    def check_text(self, text, num=None):
        """Prompts as a list of str (a single one repeated to `num`)."""
        if self.text_encoder is None:
            raise ValueError(
                "`text` was given but the model has no `text_encoder`; pass "
                "text_encoder=... to the model"
            )
        if isinstance(text, (str, bytes)):
            text = [text]
        if ops.is_tensor(text) or isinstance(text, np.ndarray):
            text = np.asarray(ops.convert_to_numpy(text) if ops.is_tensor(text) else text)
            text = text.reshape(-1).tolist()
        text = [t.decode() if isinstance(t, bytes) else t for t in list(text)]
        if not text:
            raise ValueError("`text` must hold at least one prompt, received text=[]")
        for prompt in text:
            if not isinstance(prompt, str):
                raise ValueError(
                    f"`text` must be a list of strings, received a {type(prompt).__name__}: "
                    f"{prompt!r}"
                )
            if not prompt.strip():
                raise ValueError(
                    f"`text` holds an empty prompt ({prompt!r}). To sample without a "
                    "prompt, leave `text` out (num_images=...) or use guidance_scale=0."
                )
        max_words = getattr(self.text_encoder, "max_words", None)
        if max_words is not None:
            for prompt in text:
                words = re.sub(_PUNCTUATION, "", prompt.lower()).split()
                if len(words) > max_words:
                    raise ValueError(
                        f"The prompt in `text` {prompt!r} has {len(words)} words, more "
                        f"than the text encoder takes (sequence_length - 1 = {max_words})"
                    )
        tokenize = getattr(self.text_encoder, "tokenize", None)
        if max_words is None and tokenize is not None and hasattr(self.text_encoder, "max_length"):
            tokenize(text)  # The SD CLIP tokenizer raises a ValueError itself.
        if num is not None and len(text) != num:
            if len(text) != 1:
                raise ValueError(f"`text` has {len(text)} prompts for {num} samples")
            text = text * num
        return text

    def check_condition(self, condition, num=None):
        """An image condition as float32 numpy `(num, *condition_shape)`."""
        if self.condition_shape is None:
            raise ValueError(
                "`condition` was given but the model has no image condition "
                "(condition_shape=None)"
            )
        values = np.asarray(ops.convert_to_numpy(condition), "float32")
        if tuple(values.shape[1:]) != self.condition_shape or (
            num is not None and len(values) != num
        ):
            expected = "N" if num is None else num
            raise ValueError(
                f"`condition` must have shape ({expected}, "
                f"{', '.join(str(d) for d in self.condition_shape)}), received "
                f"{values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("`condition` holds NaN or Inf values")
        return values

    def check_control(self, control, num=None):
        """A control image as float32 numpy `(num, *control_shape)`."""
        if self.control_shape is None:
            raise ValueError(
                "`control` was given but the model has no ControlNet (control_shape=None)"
            )
        values = np.asarray(ops.convert_to_numpy(control), "float32")
        if tuple(values.shape[1:]) != self.control_shape or (
            num is not None and len(values) not in (1, num)
        ):
            expected = "N" if num is None else num
            raise ValueError(
                f"`control` must have shape ({expected}, "
                f"{', '.join(str(d) for d in self.control_shape)}), received {values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("`control` holds NaN or Inf values")
        if num is not None and len(values) != num:
            values = np.repeat(values, num, axis=0)
        return values

    def count(self, num_images=None, labels=None, text=None, condition=None, control=None):
        """The number of samples the given arguments ask for, checked."""
        num = None
        if num_images is not None:
            if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
                raise ValueError(
                    f"`num_images` must be a positive int, received num_images={num_images!r}"
                )
            if int(num_images) <= 0:
                raise ValueError(
                    f"`num_images` must be positive, received num_images={num_images}"
                )
            num = int(num_images)
        for name, value in (("labels", labels), ("text", text), ("condition", condition),
                            ("control", control)):
            if value is None:
                continue
            if name == "text" and isinstance(value, (str, bytes)):
                n = 1
            else:
                n = int(np.shape(value)[0]) if np.ndim(value) else 1
            if num is None and n == 1 and name != "condition":
                continue  # A single label / prompt fits any count.
            num = _count(num, n, name)
        if num is None and (labels is not None or text is not None):
            num = 1
        if num is None:
            raise ValueError(
                "generate() needs `num_images`, `labels`, `text`, `condition` or `control`"
            )
        return num

    # --- checks inside the train / test step -------------------------------------
    def graph_labels(self, labels):
        """Training labels as int32 `(B,)`, checked at run time."""
        if self.num_classes is None:
            raise ValueError(
                "The data has `labels` but the model is unconditional (num_classes=None); "
                "pass num_classes=... to the model."
            )
        labels = ops.convert_to_tensor(labels)
        if "float" in keras.backend.standardize_dtype(labels.dtype):
            whole = ops.all(ops.equal(labels, ops.round(labels)))
            labels = runtime_check(
                labels, whole, "`labels` must be whole numbers (class indices); "
                "received fractional float labels",
            )
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        ok = ops.logical_and(ops.all(labels >= 0), ops.all(labels < self.num_classes))
        return runtime_check(
            labels, ok,
            f"`labels` must be integers in [0, {self.num_classes}) (num_classes="
            f"{self.num_classes}); received out-of-range labels",
        )
