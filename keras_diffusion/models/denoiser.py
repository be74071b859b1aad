"""The base class of every denoiser: the input-dict contract."""

import keras
import numpy as np
from keras import ops

from keras_diffusion.layers import TimestepEmbedding

INPUT_KEYS = ("x_t", "t", "labels", "context", "condition", "control", "guidance")


class Denoiser(keras.Model):
    """Base class of the denoisers (UNet, DiT, MLPDenoiser, the SD bridge).

    Called on a dict:
        "x_t": noisy data `(B, ...)`: images `(B, H, W, C)` with
            C == `input_channels`, or vectors `(B, D)` for `data_rank = 2`.
        "t": times `(B,)` (or a scalar) in [0, 1], float32.
        "labels" (optional): int class labels `(B,)` in [0, num_classes];
            `num_classes` itself (`model.null_label`) is the null class of
            classifier-free guidance. Missing: all null.
        "context" (required iff `context_dim` is set): `(B, L, context_dim)`.
        "condition" (required iff `condition_channels` > 0): images `(B, H,
            W, condition_channels)` concatenated to x_t on channels.
        "control" (required iff `control_channels` > 0, ControlNets): a
            control image `(B, H * hint_downsampling, W * hint_downsampling,
            control_channels)`.
        "guidance" (required iff `guidance_embedding`, LCM students): the
            guidance scale w `(B,)` the network is conditioned on.
    Returns a float32 tensor shaped like x_t (also under mixed precision).

    A subclass sets `num_classes`, `context_dim`, `condition_channels` and
    `input_channels` (or `data_dim` with `data_rank = 2`) before it is
    called, calls `self._unpack(inputs)` (or `self.check_inputs(inputs)`) at
    the start of `call`, and may override `_divisor()` (the number image
    sizes must be divisible by) and `_lora_targets`. A subclass with a
    `guidance_embedding` option builds the w embedding with
    `self._build_guidance_embedding(dim, frequency_dim)` and adds it to its
    time embedding with `self._add_guidance_embedding(emb, inputs)`.

    Example:
    >>> class MyDenoiser(Denoiser):
    ...     def call(self, inputs, training=None):
    ...         x, t, labels, context = self._unpack(inputs)
    ...         ...
    """

    presets = {}
    data_rank = 4
    num_classes = None
    context_dim = None
    condition_channels = 0
    control_channels = 0
    hint_downsampling = 1
    # Whether `call(inputs, residuals=...)` takes ControlNet residuals
    # (`ControlledUNet`'s bases: UNet, the SD bridge).
    accepts_residuals = False
    guidance_embedding = False
    lora_rank = None
    lora_target = "attention"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Inputs keep their dtypes under mixed precision (t must stay float32).
        self._convert_input_args = False

    def __call__(self, inputs, *args, **kwargs):
        # With input conversion off, turn arrays into tensors here (floats
        # to float32, integers kept).
        if not isinstance(inputs, dict):
            raise ValueError(
                f"`inputs` of {type(self).__name__} must be a dict with keys 'x_t' and "
                f"'t' (optional {list(INPUT_KEYS[2:])}), received inputs of type "
                f"{type(inputs).__name__}"
            )
        inputs = {k: _to_tensor(v) for k, v in inputs.items() if v is not None}
        return super().__call__(inputs, *args, **kwargs)

    # ----- presets -----
    @classmethod
    def from_preset(cls, name, **kwargs):
        """Builds a randomly initialized network from a named preset.

        Args:
            name: one of `cls.presets`.
            **kwargs: overrides of the preset's configuration.
        """
        if name not in cls.presets:
            raise ValueError(
                f"Unknown {cls.__name__} preset: name={name!r}. "
                f"Valid names: {sorted(cls.presets)}"
            )
        config = dict(cls.presets[name])
        config.update(kwargs)
        return cls(**config)

    @property
    def null_label(self):
        """The label of the null class (classifier-free guidance)."""
        return self.num_classes

    def _divisor(self):
        return 1, "1"

    # ----- validation -----
    def check_inputs(self, inputs):
        """Checks the input dict's keys and shapes; returns x_t's shape."""
        if not isinstance(inputs, dict):
            raise ValueError(
                f"`inputs` of {type(self).__name__} must be a dict with keys "
                f"'x_t' and 't', received inputs of type {type(inputs).__name__}"
            )
        return self._check_input_shapes(
            {k: v.shape for k, v in inputs.items() if v is not None}, *self._divisor()
        )

    def _check_x_shape(self, x, divisor, divisor_name):
        if self.data_rank == 2:
            if len(x) != 2:
                raise ValueError(
                    f"`x_t` must have shape (B, D) for {type(self).__name__}, "
                    f"received x_t.shape={x}"
                )
            expected = getattr(self, "data_dim", None)
            if expected is not None and x[-1] is not None and x[-1] != expected:
                raise ValueError(
                    f"`x_t` must have {expected} features (data_dim), received "
                    f"x_t.shape={x}"
                )
            return
        if len(x) != 4:
            raise ValueError(
                f"`x_t` must have rank 4 (B, H, W, C), received x_t.shape={x}"
            )
        channels = getattr(self, "input_channels", None)
        if channels is not None and x[-1] != channels:
            raise ValueError(
                f"`x_t` has {x[-1]} channels but input_channels={channels}: "
                f"received x_t.shape={x}"
            )
        for size in x[1:3]:
            if size is None:
                raise ValueError(
                    f"`x_t` needs a static height and width, received x_t.shape={x}"
                )
            if size % divisor:
                raise ValueError(
                    f"The image size of `x_t` (shape {x}) is not divisible by "
                    f"{divisor_name}={divisor}"
                )

    def _check_input_shapes(self, shapes, divisor=1, divisor_name="1"):
        if not isinstance(shapes, dict) or "x_t" not in shapes or "t" not in shapes:
            raise ValueError(
                f"{type(self).__name__} is called on a dict with keys 'x_t' and "
                "'t' (optional 'labels', 'context', 'condition'); received "
                f"inputs={shapes!r}"
            )
        unknown = set(shapes) - set(INPUT_KEYS)
        if unknown:
            raise ValueError(
                f"Unknown input keys {sorted(unknown)} in inputs; "
                f"{type(self).__name__} takes {list(INPUT_KEYS)}"
            )
        x = _shape(shapes["x_t"])
        self._check_x_shape(x, divisor, divisor_name)
        t = _shape(shapes["t"])
        if len(t) > 1:
            raise ValueError(f"`t` must have shape (B,), received t.shape={t}")
        if shapes.get("labels") is not None:
            labels = _shape(shapes["labels"])
            if self.num_classes is None:
                raise ValueError(
                    "`labels` were given but the model has num_classes=None"
                )
            if len(labels) != 1:
                raise ValueError(
                    f"`labels` must have shape (B,), received labels.shape={labels}"
                )
        if self.context_dim:
            if shapes.get("context") is None:
                raise ValueError(
                    f"The inputs need a `context` since context_dim={self.context_dim}"
                )
            ctx = _shape(shapes["context"])
            if len(ctx) != 3 or ctx[-1] != self.context_dim:
                raise ValueError(
                    f"`context` must have shape (B, L, {self.context_dim}), "
                    f"received context.shape={ctx}"
                )
        elif shapes.get("context") is not None:
            raise ValueError("`context` was given but the model has context_dim=None")
        if self.condition_channels:
            if shapes.get("condition") is None:
                raise ValueError(
                    "The inputs need a `condition` since condition_channels="
                    f"{self.condition_channels}"
                )
            cond = _shape(shapes["condition"])
            if len(cond) != len(x) or tuple(cond[1:-1]) != tuple(x[1:-1]) or (
                cond[-1] != self.condition_channels
            ):
                raise ValueError(
                    f"`condition` must have shape (B, {', '.join(str(d) for d in x[1:-1])}, "
                    f"{self.condition_channels}), received condition.shape={cond}"
                )
        elif shapes.get("condition") is not None:
            raise ValueError(
                "`condition` was given but the model has condition_channels=0"
            )
        self._check_control_shape(shapes.get("control"), x)
        self._check_guidance_shape(shapes.get("guidance"))
        return x

    def _check_guidance_shape(self, guidance):
        if not self.guidance_embedding:
            if guidance is not None:
                raise ValueError(
                    f"`guidance` was given but {type(self).__name__} has "
                    "guidance_embedding=False"
                )
            return
        if guidance is None:
            raise ValueError(
                f"The inputs need a `guidance` scale (B,) since {type(self).__name__} has "
                "guidance_embedding=True"
            )
        if len(_shape(guidance)) != 1:
            raise ValueError(
                f"`guidance` must have shape (B,), received guidance.shape={_shape(guidance)}"
            )

    # ----- the guidance (w) embedding -----
    def _build_guidance_embedding(self, dim, frequency_dim):
        """Builds the embedding of the guidance scale w (iff
        `guidance_embedding`; LCM, Luo et al. 2023): sinusoids of w (scaled
        by 1000, as t) and an MLP (`TimestepEmbedding`), then a
        zero-initialized Dense projection (`guidance_proj`), so that a copy
        of a trained network with the option turned on starts as that
        network.

        Args:
            dim: width of the time embedding the w embedding is added to.
            frequency_dim: sinusoidal features of w (those of the time
                embedding).
        """
        if not self.guidance_embedding:
            return
        policy = self.dtype_policy
        self.guidance_embed = TimestepEmbedding(
            dim, frequency_dim=frequency_dim, dtype=policy, name="guidance_embed"
        )
        self.guidance_embed.build((None,))
        self.guidance_proj = keras.layers.Dense(
            dim, kernel_initializer="zeros", dtype=policy, name="guidance_proj"
        )
        self.guidance_proj.build((None, dim))

    def _add_guidance_embedding(self, emb, guidance):
        """`emb` plus the embedding of w (`guidance`, `(B,)`; the inputs'
        "guidance") when the network has `guidance_embedding`, else `emb`."""
        if not self.guidance_embedding or guidance is None:
            return emb
        w = ops.cast(ops.reshape(guidance, (-1,)), "float32")
        return emb + ops.cast(self.guidance_proj(self.guidance_embed(w)), emb.dtype)

    def _check_control_shape(self, control, x):
        if not self.control_channels:
            if control is not None:
                raise ValueError(
                    f"`control` was given but {type(self).__name__} has no ControlNet "
                    "(control_channels=0)"
                )
            return
        expected = tuple(
            None if d is None else d * self.hint_downsampling for d in x[1:-1]
        ) + (self.control_channels,)
        control = None if control is None else _shape(control)
        if control is None or len(control) != len(x) or tuple(control[1:]) != expected:
            raise ValueError(
                f"`control` must have shape (B, {', '.join(str(d) for d in expected)}) "
                f"for x_t of shape {x}, received "
                f"{'no control' if control is None else f'control.shape={control}'}"
            )

    def _unpack(self, inputs):
        """Checks the inputs and returns `(x, t, labels, context)`: x in the
        compute dtype with the condition concatenated on channels, t float
        `(B,)`, labels int32 (null where missing) or None, context or None."""
        self.check_inputs(inputs)
        x = ops.cast(inputs["x_t"], self.compute_dtype)
        t = ops.convert_to_tensor(inputs["t"])
        if not str(t.dtype).startswith("float"):
            t = ops.cast(t, "float32")
        if len(t.shape) == 0:
            t = ops.broadcast_to(t, (ops.shape(x)[0],))
        labels = inputs.get("labels")
        if self.num_classes is not None:
            if labels is None:
                labels = ops.full((ops.shape(x)[0],), self.num_classes, "int32")
            else:
                labels = ops.cast(labels, "int32")
                _check_labels(labels, self.num_classes)
        context = inputs.get("context")
        if context is not None:
            context = ops.cast(context, self.compute_dtype)
        condition = inputs.get("condition")
        if condition is not None:
            condition = ops.cast(condition, self.compute_dtype)
            x = ops.concatenate([x, condition], axis=-1)
        return x, t, labels, context

    # ----- LoRA -----
    def _lora_targets(self, target):
        from keras_diffusion.layers import AttentionBlock, DiTBlock

        names = {"qkv", "proj", "cross_q", "cross_kv", "cross_proj"}
        targets = []
        if target == "attention":
            for layer in self._flatten_layers(include_self=False):
                if isinstance(layer, (AttentionBlock, DiTBlock)):
                    for sub in layer._flatten_layers(include_self=False):
                        if isinstance(sub, keras.layers.Dense) and sub.name in names:
                            targets.append(sub)
        elif target == "all":
            targets = dense_and_conv_layers(self)
        else:
            raise ValueError(
                f"`target` must be 'attention' or 'all', received target={target!r}"
            )
        return targets

    def enable_lora(self, rank, target="attention"):
        """Enables LoRA (Keras' own `layer.enable_lora(rank)`) on the
        attention projections (`target="attention"`) or on every Dense and
        Conv layer (`"all"`), and freezes every other weight, so that only
        the LoRA weights train. Survives `get_config` and `.keras` saving.

        Args:
            rank: the LoRA rank.
            target: "attention" or "all".

        Returns:
            The list of layers LoRA was enabled on.
        """
        if not self.built:
            raise ValueError(
                "Call the model on inputs (or build it) before enable_lora(rank=...)"
            )
        targets = self._lora_targets(target)
        if not targets:
            raise ValueError(
                f"{type(self).__name__} has no layer for LoRA target={target!r}"
            )
        for layer in targets:
            if getattr(layer, "lora_enabled", False):
                raise ValueError(f"LoRA is already enabled on layer {layer.name}")
            layer.enable_lora(int(rank))
        self.lora_rank, self.lora_target = int(rank), target
        for v in self.weights:
            if "lora_kernel" not in v.path:
                v.trainable = False
        return targets

    def _maybe_restore_lora(self):
        if self.lora_rank:
            rank, self.lora_rank = self.lora_rank, None
            self.enable_lora(rank, self.lora_target)

    def _base_config(self):
        return {"lora_rank": self.lora_rank, "lora_target": self.lora_target}


def add_residuals(skips, middle, residuals):
    """ControlNet residuals added inside a base network: `residuals` holds
    one tensor per skip connection and, last, one for the middle block's
    output; returns the new `(skips, middle)`."""
    if len(residuals) != len(skips) + 1:
        raise ValueError(
            f"`residuals` must hold {len(skips) + 1} tensors (the skips and the middle "
            f"block), received {len(residuals)}"
        )
    skips = [a + ops.cast(r, a.dtype) for a, r in zip(skips, residuals[:-1])]
    return skips, middle + ops.cast(residuals[-1], middle.dtype)


def dense_and_conv_layers(model):
    """Every Dense, EinsumDense and Conv2D layer inside `model` (LoRA "all")."""
    kinds = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2D)
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, kinds)
    ]


def _shape(shape):
    return None if shape is None else tuple(shape)


def _to_tensor(x):
    if ops.is_tensor(x) or isinstance(x, keras.KerasTensor):
        return x
    x = np.asarray(x)
    if x.dtype.kind == "f":
        x = x.astype("float32")
    return ops.convert_to_tensor(x)


def _check_labels(labels, num_classes):
    """Checks label values when they are concrete (eager); traced labels
    cannot be checked and pass."""
    try:
        values = np.asarray(labels)
    except Exception:  # symbolic / traced: nothing to check
        return
    if values.dtype == object or values.size == 0:
        return
    bad = values[(values < 0) | (values > num_classes)]
    if bad.size:
        raise ValueError(
            f"`labels` must be in [0, {num_classes}] (num_classes={num_classes}; "
            f"{num_classes} is the null class), received labels={values.tolist()}"
        )
