"""Presets of the denoisers and their shared base class.

`UNet.from_preset(name)` / `DiT.from_preset(name)` build a randomly
initialized network with a named configuration, in the manner of keras-hub
(no weights are downloaded). `Denoiser` holds what both networks share: the
input-dict contract, input validation, `from_preset` and `enable_lora`.
"""

import keras
import numpy as np
from keras import ops

# Parameter counts are those of the networks as built here (the fixed DiT
# position embedding included, as in DiT's own count), next to the papers'.
UNET_PRESETS = {
    # Ho et al. 2020, CIFAR-10: 35.7M parameters in the paper; 35,746,307
    # here (+0.13%). DDPM adds the time embedding (no scale-shift) and uses
    # one attention head. Attention at 16x16 on 32x32 images.
    "ddpm_cifar10": {
        "input_channels": 3,
        "base_channels": 128,
        "channel_multipliers": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "dropout": 0.1,
        "num_heads": 1,
        "time_conditioning": "additive",
    },
    # The throughput benchmark's configuration (diffusers' UNet2DModel with
    # block_out_channels (64, 128, 128, 128): 8.95M parameters).
    "unet_cifar10_small": {
        "input_channels": 3,
        "base_channels": 64,
        "channel_multipliers": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "dropout": 0.0,
        "head_channels": 32,
        "time_conditioning": "additive",
    },
    # Tiny, for tests and examples (e.g. 16x16 or 28x28 inputs).
    "unet_tiny": {
        "input_channels": 3,
        "base_channels": 32,
        "channel_multipliers": (1, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (8,),
        "num_groups": 8,
        "head_channels": 32,
    },
}

_DIT_SIZES = {
    # name: (depth, hidden_dim, num_heads); Peebles & Xie Table 1.
    "s": (12, 384, 6),
    "b": (12, 768, 12),
    "l": (24, 1024, 16),
    "xl": (28, 1152, 16),
}
# Peebles & Xie, Table 4 (256x256 images -> 32x32x4 latents, 1000 classes),
# parameters in millions.
DIT_PAPER_PARAMS = {
    "dit_s_8": 33, "dit_s_4": 33, "dit_s_2": 33,
    "dit_b_8": 131, "dit_b_4": 130, "dit_b_2": 130,
    "dit_l_8": 459, "dit_l_4": 458, "dit_l_2": 458,
    "dit_xl_8": 676, "dit_xl_4": 675, "dit_xl_2": 675,
}
# The paper's networks predict 8 channels (learn_sigma); these presets keep
# the library's contract (output shaped like x_t, 4 channels), which removes
# (hidden_dim + 1) * patch_size**2 * 4 weights from the last layer (18,448
# for DiT-XL/2: 675,111,184 here against 675,129,632 in the reference code,
# the fixed position embedding counted in both). Counts stay within 1% of
# the table for every preset (tests/test_dit.py).
DIT_PRESETS = {
    f"dit_{size}_{p}": {
        "input_channels": 4,
        "patch_size": p,
        "hidden_dim": d,
        "depth": n,
        "num_heads": h,
        "num_classes": 1000,
    }
    for size, (n, d, h) in _DIT_SIZES.items()
    for p in (2, 4, 8)
}


def _shape(shape):
    return None if shape is None else tuple(shape)


class Denoiser(keras.Model):
    """Base class of the denoisers (UNet, DiT): the input-dict contract.

    Called on a dict:
        "x_t": noisy images `(B, H, W, C)`, C == `input_channels`.
        "t": times `(B,)` (or a scalar) in [0, 1], float32.
        "labels" (optional): int class labels `(B,)` in [0, num_classes];
            `num_classes` itself (`model.null_label`) is the null class of
            classifier-free guidance. Missing: all null.
        "context" (required iff `context_dim` is set): `(B, L, context_dim)`.
        "condition" (required iff `condition_channels` > 0): images `(B, H,
            W, condition_channels)` concatenated to x_t on channels.
    Returns a float32 tensor shaped like x_t (also under mixed precision).
    """

    presets = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Inputs keep their dtypes under mixed precision (t must stay float32).
        self._convert_input_args = False

    def __call__(self, inputs, *args, **kwargs):
        # With input conversion off, turn arrays into tensors here (floats
        # to float32, integers kept).
        if isinstance(inputs, dict):
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

    # ----- validation -----
    def _check_input_shapes(self, shapes, divisor, divisor_name):
        if not isinstance(shapes, dict) or "x_t" not in shapes or "t" not in shapes:
            raise ValueError(
                f"{type(self).__name__} is called on a dict with keys 'x_t' and "
                "'t' (optional 'labels', 'context', 'condition'); received "
                f"inputs={shapes!r}"
            )
        unknown = set(shapes) - {"x_t", "t", "labels", "context", "condition"}
        if unknown:
            raise ValueError(f"Unknown input keys {sorted(unknown)} in inputs")
        x = _shape(shapes["x_t"])
        if len(x) != 4:
            raise ValueError(
                f"`x_t` must have rank 4 (B, H, W, C), received x_t.shape={x}"
            )
        if x[-1] != self.input_channels:
            raise ValueError(
                f"`x_t` has {x[-1]} channels but input_channels="
                f"{self.input_channels}: received x_t.shape={x}"
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
            if len(cond) != 4 or tuple(cond[1:]) != tuple(x[1:3]) + (
                self.condition_channels,
            ):
                raise ValueError(
                    f"`condition` must have shape (B, {x[1]}, {x[2]}, "
                    f"{self.condition_channels}), received condition.shape={cond}"
                )
        elif shapes.get("condition") is not None:
            raise ValueError(
                "`condition` was given but the model has condition_channels=0"
            )
        return x

    def _unpack(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError(
                f"`inputs` of {type(self).__name__} must be a dict with keys "
                f"'x_t' and 't', received inputs of type {type(inputs).__name__}"
            )
        self._check_input_shapes(
            {k: v.shape for k, v in inputs.items() if v is not None}, *self._divisor()
        )
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
            kinds = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2D)
            targets = [
                layer
                for layer in self._flatten_layers(include_self=False)
                if isinstance(layer, kinds)
            ]
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
        """
        if not self.built:
            raise ValueError(
                "Call the model on inputs (or build it) before enable_lora(rank=...)"
            )
        targets = self._lora_targets(target)
        for layer in targets:
            if getattr(layer, "lora_enabled", False):
                raise ValueError(f"LoRA is already enabled on layer {layer.name}")
            layer.enable_lora(int(rank))
        self.lora_rank, self.lora_target = int(rank), target
        for v in self.weights:
            if "lora_kernel" not in v.path:
                v.trainable = False

    def _maybe_restore_lora(self):
        if self.lora_rank:
            rank, self.lora_rank = self.lora_rank, None
            self.enable_lora(rank, self.lora_target)

    def _base_config(self):
        return {"lora_rank": self.lora_rank, "lora_target": self.lora_target}


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
