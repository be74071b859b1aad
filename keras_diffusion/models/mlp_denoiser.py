"""An MLP denoiser for low-dimensional data (toy problems, tabular data)."""

import keras
from keras import ops

from keras_diffusion.layers.timestep_embedding import sinusoidal_embedding
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.denoiser import _check_labels


@keras.saving.register_keras_serializable(package="keras_diffusion")
class MLPDenoiser(Denoiser):
    """A residual MLP denoiser for data of shape `(B, D)`.

    Follows the denoiser contract of `keras_diffusion`: called with a dict
    `{"x_t": (B, D), "t": (B,) in [0, 1], optional "labels": int (B,)}` it
    returns a float32 tensor shaped like `x_t` (whatever the model predicts:
    epsilon, x0, v or flow). Time enters through sinusoidal features followed
    by an MLP; class labels (when `num_classes` is set) through an embedding of
    `num_classes + 1` entries, the last one (`null_label`) being the "no
    label" class used for classifier-free guidance. Both are added to the
    hidden state, which then goes through `num_layers` pre-norm residual MLP
    blocks.

    Args:
        data_dim: D; `None` infers it from the first call.
        hidden_dim: width of the hidden layers.
        num_layers: number of residual blocks.
        time_embedding_dim: number of sinusoidal time features.
        num_classes: number of classes for class-conditional models, or `None`.
        dropout: dropout rate inside the residual blocks.
        lora_rank, lora_target: set by `enable_lora` (target "all": every
            Dense layer), restored on load.
        **kwargs: base model arguments (`name`, `dtype`, ...).

    Example:
    >>> denoiser = MLPDenoiser(data_dim=2, hidden_dim=128, num_layers=3)
    >>> out = denoiser({"x_t": keras.ops.zeros((4, 2)),
    ...                 "t": keras.ops.full((4,), 0.5)})
    >>> out.shape
    (4, 2)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020 (the
        sinusoidal time embedding of a denoiser).
    """

    def __init__(
        self,
        data_dim=None,
        hidden_dim=256,
        num_layers=3,
        time_embedding_dim=64,
        num_classes=None,
        dropout=0.0,
        lora_rank=None,
        lora_target="all",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lora_rank = lora_rank
        self.lora_target = lora_target
        if data_dim is not None and int(data_dim) <= 0:
            raise ValueError(f"`data_dim` must be positive, received data_dim={data_dim}")
        if int(hidden_dim) <= 0:
            raise ValueError(
                f"`hidden_dim` must be positive, received hidden_dim={hidden_dim}"
            )
        if int(num_layers) < 0:
            raise ValueError(
                f"`num_layers` must be >= 0, received num_layers={num_layers}"
            )
        if num_classes is not None and int(num_classes) <= 0:
            raise ValueError(
                f"`num_classes` must be positive or None, received num_classes={num_classes}"
            )
        self.data_dim = None if data_dim is None else int(data_dim)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.time_embedding_dim = int(time_embedding_dim)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.dropout = float(dropout)

        policy = self.dtype_policy
        self.input_projection = keras.layers.Dense(
            self.hidden_dim, dtype=policy, name="input_projection"
        )
        self.time_dense_1 = keras.layers.Dense(
            self.hidden_dim, dtype=policy, name="time_dense_1"
        )
        self.time_dense_2 = keras.layers.Dense(
            self.hidden_dim, dtype=policy, name="time_dense_2"
        )
        self.label_embedding = None
        if self.num_classes is not None:
            self.label_embedding = keras.layers.Embedding(
                self.num_classes + 1, self.hidden_dim, dtype=policy, name="label_embedding"
            )
        self.block_norms = [
            keras.layers.LayerNormalization(dtype=policy, name=f"block_{i}_norm")
            for i in range(self.num_layers)
        ]
        self.block_dense_1 = [
            keras.layers.Dense(2 * self.hidden_dim, dtype=policy, name=f"block_{i}_dense_1")
            for i in range(self.num_layers)
        ]
        self.block_dense_2 = [
            keras.layers.Dense(self.hidden_dim, dtype=policy, name=f"block_{i}_dense_2")
            for i in range(self.num_layers)
        ]
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy)
        self.output_norm = keras.layers.LayerNormalization(dtype=policy, name="output_norm")
        self.output_projection = None
        if self.data_dim is not None:
            self.output_projection = keras.layers.Dense(
                self.data_dim, dtype=policy, name="output_projection"
            )

    def build(self, input_shape):
        x_shape = tuple(input_shape["x_t"])
        if len(x_shape) != 2:
            raise ValueError(
                "MLPDenoiser expects `x_t` of shape (batch, data_dim), received "
                f"shape {x_shape}"
            )
        if self.data_dim is None:
            self.data_dim = int(x_shape[-1])
        elif x_shape[-1] is not None and int(x_shape[-1]) != self.data_dim:
            raise ValueError(
                f"`x_t` must have {self.data_dim} features (data_dim), received "
                f"shape {x_shape}"
            )
        if self.output_projection is None:
            self.output_projection = keras.layers.Dense(
                self.data_dim, dtype=self.dtype_policy, name="output_projection"
            )
        self.input_projection.build((None, self.data_dim))
        self.time_dense_1.build((None, self.time_embedding_dim))
        self.time_dense_2.build((None, self.hidden_dim))
        if self.label_embedding is not None:
            self.label_embedding.build((None,))
        for norm, dense_1, dense_2 in zip(
            self.block_norms, self.block_dense_1, self.block_dense_2
        ):
            norm.build((None, self.hidden_dim))
            dense_1.build((None, self.hidden_dim))
            dense_2.build((None, 2 * self.hidden_dim))
        self.output_norm.build((None, self.hidden_dim))
        self.output_projection.build((None, self.hidden_dim))
        self.built = True
        self._maybe_restore_lora()

    data_rank = 2

    def call(self, inputs, training=None):
        self.check_inputs(inputs)
        x = inputs["x_t"]
        t = ops.reshape(ops.cast(inputs["t"], "float32"), (-1,))
        h = self.input_projection(x)
        temb = sinusoidal_embedding(t, self.time_embedding_dim)
        temb = self.time_dense_2(ops.silu(self.time_dense_1(ops.cast(temb, h.dtype))))
        h = h + temb
        labels = inputs.get("labels")
        if labels is not None:
            if self.label_embedding is None:
                raise ValueError(
                    "`labels` were given to an unconditional MLPDenoiser "
                    "(num_classes=None)"
                )
            labels = ops.cast(labels, "int32")
            _check_labels(labels, self.num_classes)
            h = h + self.label_embedding(labels)
        elif self.label_embedding is not None:
            # No labels on a conditional model: the null class.
            null = ops.full((ops.shape(x)[0],), self.num_classes, dtype="int32")
            h = h + self.label_embedding(null)
        for norm, dense_1, dense_2 in zip(
            self.block_norms, self.block_dense_1, self.block_dense_2
        ):
            y = dense_2(self.dropout_layer(ops.silu(dense_1(norm(h))), training=training))
            h = h + y
        out = self.output_projection(ops.silu(self.output_norm(h)))
        return ops.cast(out, "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape["x_t"])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "data_dim": self.data_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "time_embedding_dim": self.time_embedding_dim,
                "num_classes": self.num_classes,
                "dropout": self.dropout,
                **self._base_config(),
            }
        )
        return config
