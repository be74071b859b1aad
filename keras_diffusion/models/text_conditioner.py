"""Text conditioning: a TextVectorization tokenizer and a Transformer encoder.

The tokenizer is `keras.layers.TextVectorization`, a TensorFlow-native layer:
string prompts are tokenized in-graph, so an exported SavedModel takes raw
strings. The encoder (embedding, Transformer blocks) uses Keras layers only
and also runs on the JAX backend when it is given token ids
(`TextConditioner.tokenize` itself needs TensorFlow).
"""

import keras
from keras import ops

OVERFLOW_MODES = ("truncate", "error")
POOLINGS = ("mean", "first")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class TransformerEncoderBlock(keras.layers.Layer):
    """Pre-LayerNorm Transformer encoder block with a key padding mask.

    `x + MHA(LN(x))`, then `x + MLP(LN(x))` with a GELU MLP. The attention
    projections are `EinsumDense` layers (LoRA through `enable_lora`).

    Args:
        num_heads: attention heads.
        intermediate_dim: hidden width of the MLP.
        dropout: dropout rate.
        epsilon: LayerNormalization epsilon.
        **kwargs: base layer arguments.
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        policy = self.dtype_policy
        self.norm_1 = keras.layers.LayerNormalization(epsilon=epsilon, dtype=policy, name="norm_1")
        self.norm_2 = keras.layers.LayerNormalization(epsilon=epsilon, dtype=policy, name="norm_2")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy)

    def build(self, input_shape):
        d = input_shape[-1]
        if d % self.num_heads:
            raise ValueError(
                f"`num_heads`={self.num_heads} must divide the embedding width {d}"
            )
        policy = self.dtype_policy
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, d // self.num_heads, dropout=self.dropout, dtype=policy, name="attention"
        )
        self.attention.build(input_shape, input_shape)
        self.mlp_in = keras.layers.Dense(self.intermediate_dim, dtype=policy, name="mlp_in")
        self.mlp_out = keras.layers.Dense(d, dtype=policy, name="mlp_out")
        self.norm_1.build(input_shape)
        self.norm_2.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, x, attention_mask=None, training=None):
        h = self.norm_1(x)
        h = self.attention(h, h, attention_mask=attention_mask, training=training)
        x = x + self.dropout_layer(h, training=training)
        h = self.mlp_out(ops.gelu(self.mlp_in(self.norm_2(x)), approximate=False))
        return x + self.dropout_layer(h, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class TextConditioner(keras.layers.Layer):
    """Turns prompts into a context sequence and a pooled vector.

    Tokenizer: `keras.layers.TextVectorization` (lower-case, strip
    punctuation, split on whitespace), built by `adapt(captions)` or given a
    `vocabulary`. Token 0 is padding and 1 the out-of-vocabulary token. A
    learned start token is put before the words, so a prompt has at most
    `sequence_length - 1` words: longer prompts are truncated (the extra words
    dropped; `on_overflow="error"` raises instead, in-graph). The empty prompt
    `""` is valid: it is the start token alone, the unconditional input for
    classifier-free guidance (`null_context()`).

    Encoder: token + learned position embeddings, `num_layers` pre-LN
    Transformer blocks whose attention ignores padding keys, a final
    LayerNorm. Called on a batch of prompts (strings, shape `(B,)`) or of
    token ids (`(B, sequence_length - 1)` integers from `tokenize`), it returns
    the context `(B, sequence_length, embedding_dim)` (what
    `DiffusionModel(text_encoder=...)` expects), or with `return_pooled=True`
    (and always from `encode(prompts)`) the dict

        {"context": (B, sequence_length, embedding_dim),
         "pooled": (B, embedding_dim)}

    `pooled` is the mean over the start token and the words (`pooling="mean"`)
    or the start token's state (`"first"`). Train it jointly with the
    denoiser, or freeze it with `trainable=False`.

    Args:
        vocabulary: a list of tokens (as `get_vocabulary()` returns), or None
            until `adapt`.
        vocabulary_size: the most tokens, padding and OOV included.
        sequence_length: length of the context (start token + words).
        embedding_dim: width D of the context.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        intermediate_dim: MLP width (default 4 * D).
        dropout: dropout rate.
        pooling: `"mean"` or `"first"`.
        on_overflow: `"truncate"` or `"error"` for prompts with more than
            `sequence_length - 1` words.
        return_pooled: whether calling the layer returns the dict with the
            pooled vector rather than the context alone.
        **kwargs: base layer arguments (`trainable`, `name`, `dtype`).

    Example:
    >>> conditioner = TextConditioner(sequence_length=8, embedding_dim=64)
    >>> conditioner.adapt(["a handwritten seven", "the digit 7"])
    >>> conditioner(["a handwritten seven", ""]).shape
    (2, 8, 64)
    >>> out = conditioner.encode(["a handwritten seven", ""])
    >>> out["context"].shape, out["pooled"].shape
    ((2, 8, 64), (2, 64))

    References:
        Vaswani et al., Attention Is All You Need, 2017.
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022 (LDM-KL-8-G's trained-from-scratch text encoder).
    """

    def __init__(
        self,
        vocabulary=None,
        vocabulary_size=1000,
        sequence_length=16,
        embedding_dim=128,
        num_layers=2,
        num_heads=4,
        intermediate_dim=None,
        dropout=0.0,
        pooling="mean",
        on_overflow="truncate",
        return_pooled=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {list(POOLINGS)}, received pooling={pooling!r}"
            )
        if on_overflow not in OVERFLOW_MODES:
            raise ValueError(
                f"`on_overflow` must be one of {list(OVERFLOW_MODES)}, received "
                f"on_overflow={on_overflow!r}"
            )
        if int(sequence_length) < 2:
            raise ValueError(
                "`sequence_length` must be >= 2 (the start token and one word), "
                f"received sequence_length={sequence_length}"
            )
        if int(vocabulary_size) < 3:
            raise ValueError(
                f"`vocabulary_size` must be >= 3, received vocabulary_size={vocabulary_size}"
            )
        embedding_dim = int(embedding_dim)
        if embedding_dim % int(num_heads):
            raise ValueError(
                f"`num_heads`={num_heads} must divide embedding_dim={embedding_dim}"
            )
        self.vocabulary_size = int(vocabulary_size)
        self.sequence_length = int(sequence_length)
        self.embedding_dim = embedding_dim
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim or 4 * embedding_dim)
        self.dropout = float(dropout)
        self.pooling = pooling
        self.on_overflow = on_overflow
        self.return_pooled = bool(return_pooled)
        self.max_words = self.sequence_length - 1

        self.vectorizer = None
        self._has_vocabulary = False
        try:
            self.vectorizer = keras.layers.TextVectorization(
                max_tokens=self.vocabulary_size,
                output_mode="int",
                output_sequence_length=self.max_words,
                name="tokenizer",
            )
        except ImportError:  # TextVectorization needs TensorFlow.
            pass
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

        policy = self.dtype_policy
        # One more row than the vocabulary: the start token.
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size + 1, embedding_dim, dtype=policy, name="token_embedding"
        )
        self.position_embedding = keras.layers.Embedding(
            self.sequence_length, embedding_dim, dtype=policy, name="position_embedding"
        )
        self.blocks = [
            TransformerEncoderBlock(
                self.num_heads, self.intermediate_dim, self.dropout, dtype=policy, name=f"block_{i}"
            )
            for i in range(self.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=policy, name="final_norm"
        )

    # --- vocabulary ----------------------------------------------------------
    def _require_vectorizer(self):
        if self.vectorizer is None:
            raise RuntimeError(
                "Tokenizing prompts needs TensorFlow (keras.layers.TextVectorization); "
                "on other backends call the TextConditioner on token ids"
            )

    def adapt(self, captions, batch_size=None, steps=None):
        """Builds the vocabulary from training captions.

        Args:
            captions: a list or array of strings, or a `tf.data.Dataset` of
                strings (or of batches of strings).
            batch_size, steps: as in `TextVectorization.adapt`.
        """
        self._require_vectorizer()
        if isinstance(captions, str):
            raise ValueError(
                "`captions` must be a list of strings, received one string "
                f"captions={captions!r}"
            )
        if not hasattr(captions, "element_spec"):
            captions = [str(c) for c in list(captions)]
            if not captions:
                raise ValueError(
                    "`captions` is empty: TextConditioner.adapt needs at least "
                    "one caption to build the vocabulary, received captions=[]"
                )
            if not any(c.strip() for c in captions):
                raise ValueError(
                    "`captions` contains only empty strings; nothing to build a "
                    f"vocabulary from (received {len(captions)} empty captions)"
                )
        self.vectorizer.adapt(captions, batch_size=batch_size, steps=steps)
        self._has_vocabulary = True

    def set_vocabulary(self, vocabulary):
        """Sets the vocabulary (a list of tokens, padding and OOV first or not)."""
        self._require_vectorizer()
        vocabulary = [str(v) for v in vocabulary]
        if len(vocabulary) > self.vocabulary_size:
            raise ValueError(
                f"The vocabulary has {len(vocabulary)} tokens, more than "
                f"vocabulary_size={self.vocabulary_size}"
            )
        self.vectorizer.set_vocabulary(vocabulary)
        self._has_vocabulary = True

    def get_vocabulary(self):
        """The vocabulary as a list of Python strings ("" and "[UNK]" first)."""
        if self.vectorizer is None:
            return None
        return [str(v) for v in self.vectorizer.get_vocabulary()]

    @property
    def has_vocabulary(self):
        return self._has_vocabulary

    # --- tokenizing (TensorFlow) --------------------------------------------
    def tokenize(self, prompts):
        """Token ids `(B, sequence_length - 1)` (int32) of string prompts.

        Prompts with more words than `sequence_length - 1` are truncated, or
        raise an `InvalidArgumentError` with `on_overflow="error"`.
        """
        self._require_vectorizer()
        if not self.has_vocabulary:
            raise ValueError(
                "The TextConditioner has no vocabulary: call `adapt(captions)` "
                "or pass `vocabulary=` first"
            )
        import tensorflow as tf

        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = tf.convert_to_tensor(prompts, dtype=tf.string)
        if prompts.shape.rank == 2 and prompts.shape[-1] == 1:
            prompts = tf.squeeze(prompts, -1)
        if prompts.shape.rank != 1:
            raise ValueError(
                "`prompts` must be a 1-D batch of strings, received shape "
                f"{tuple(prompts.shape)}"
            )
        if self.on_overflow == "error":
            words = tf.strings.split(
                tf.strings.regex_replace(
                    tf.strings.lower(prompts), r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']', ""
                )
            ).row_lengths()
            tf.debugging.assert_less_equal(
                tf.cast(tf.reduce_max(tf.concat([words, [0]], 0)), tf.int64),
                tf.constant(self.max_words, tf.int64),
                message=(
                    f"A prompt has more than sequence_length - 1 = {self.max_words} "
                    "words (on_overflow='error')"
                ),
            )
        return tf.cast(self.vectorizer(prompts), tf.int32)

    # --- encoder (keras.ops: every backend) ---------------------------------
    def build(self, input_shape=None):
        length = self.sequence_length
        self.token_embedding.build((None, length))
        self.position_embedding.build((None, length))
        shape = (None, length, self.embedding_dim)
        for block in self.blocks:
            block.build(shape)
        self.final_norm.build(shape)
        self.built = True

    def _is_string(self, inputs):
        if isinstance(inputs, str):
            return True
        if isinstance(inputs, (list, tuple)):
            return len(inputs) > 0 and isinstance(inputs[0], str)
        dtype = getattr(inputs, "dtype", None)
        if dtype is None:
            return False
        name = getattr(dtype, "name", str(dtype))
        return name == "string" or str(dtype).startswith(("<U", "|S", "object")) or (
            getattr(dtype, "kind", None) in ("U", "S", "O")
        )

    def encode_tokens(self, token_ids, training=None):
        """Context and pooled vector from token ids `(B, sequence_length - 1)`."""
        ids = ops.cast(token_ids, "int32")
        if len(ids.shape) != 2 or ids.shape[-1] != self.max_words:
            raise ValueError(
                f"`token_ids` must have shape (batch, {self.max_words}) "
                f"(sequence_length - 1), received shape {tuple(ids.shape)}"
            )
        batch = ops.shape(ids)[0]
        start = ops.full((batch, 1), self.vocabulary_size, dtype="int32")
        ids = ops.concatenate([start, ids], axis=1)
        valid = ops.not_equal(ids, 0)  # (B, L); the start token is always valid.
        x = self.token_embedding(ids) + self.position_embedding(
            ops.arange(self.sequence_length, dtype="int32")
        )[None]
        mask = ops.logical_and(valid[:, None, :], ops.ones_like(valid)[:, :, None])
        for block in self.blocks:
            x = block(x, attention_mask=mask, training=training)
        context = self.final_norm(x)
        if self.pooling == "first":
            pooled = context[:, 0]
        else:
            weights = ops.cast(valid, context.dtype)[:, :, None]
            pooled = ops.sum(context * weights, axis=1) / ops.sum(weights, axis=1)
        return {"context": context, "pooled": pooled}

    def __call__(self, inputs, *args, **kwargs):
        # Keras layers take tensors only: a Python list of prompts becomes a
        # string tensor first.
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)
        ):
            import tensorflow as tf

            inputs = tf.constant([inputs] if isinstance(inputs, str) else list(inputs))
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        if self._is_string(inputs):
            inputs = self.tokenize(inputs)
        out = self.encode_tokens(inputs, training=training)
        return out if self.return_pooled else out["context"]

    def encode(self, prompts, training=None):
        """`{"context", "pooled"}` of a batch of prompts (or token ids)."""
        if isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str)
        ):
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self._is_string(prompts):
            prompts = self.tokenize(prompts)
        if not self.built:
            self.build()
        return self.encode_tokens(prompts, training=training)

    def null_context(self, batch_size=1):
        """The empty prompt's `{"context", "pooled"}`: the unconditional input
        for classifier-free guidance."""
        if not self.built:
            self.build()
        ids = ops.zeros((batch_size, self.max_words), dtype="int32")
        return self.encode_tokens(ids)

    def compute_output_spec(self, inputs, training=None):
        batch = inputs.shape[0] if len(inputs.shape) else None
        context = keras.KerasTensor(
            (batch, self.sequence_length, self.embedding_dim), dtype=self.compute_dtype
        )
        if not self.return_pooled:
            return context
        pooled = keras.KerasTensor((batch, self.embedding_dim), dtype=self.compute_dtype)
        return {"context": context, "pooled": pooled}

    # --- serialization ---------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": self.get_vocabulary() if self.has_vocabulary else None,
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "pooling": self.pooling,
                "on_overflow": self.on_overflow,
                "return_pooled": self.return_pooled,
            }
        )
        return config
