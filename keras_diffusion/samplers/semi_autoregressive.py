"""Semi-autoregressive block generation of texts longer than the context."""

from keras import ops

from keras_diffusion.random import sampler_seed


def sample_block(sample_window, tokens, done, block, seed, window, num_steps=None):
    """Generates the next block of `tokens` from a window of at most `window`.

    The block rule (written once: `MaskedDiffusionLM.generate` runs it in a
    Python loop, the text SavedModel in a `tf.while_loop`): while fewer than
    `window` tokens are done (the first block, after a prefix shorter than
    the window), the window is every done token and as many new ones as fit;
    after that it is the last `window // 2` done tokens and at most
    `window - window // 2` new ones. Block `block` is sampled with the seed
    `keras_diffusion.random.sampler_seed(seed, block)`.

    Args:
        sample_window: `sample_window(z, seed, num_steps) -> (tokens,
            num_calls)`, a sampler that fills the masks of a window `z`.
        tokens: int `(B, length)`: the first `done` tokens given, masks after.
        done: how many tokens are done (an int, or a scalar int tensor).
        block: the block's index (an int, or an int64 scalar tensor where
            `seed` is a tensor).
        seed: the generation's seed (an int, or an int64 scalar tensor).
        window: the model's context, a Python int >= 2.
        num_steps: sampler steps of the block (None: its new tokens).

    Returns:
        `(tokens, done, num_calls)`: the tokens with the block filled in,
        the tokens now done and the sampler's network calls.

    Example:
    >>> done, block = len(prefix), 0
    >>> while done < length:
    ...     tokens, done, _ = sample_block(fn, tokens, done, block, seed, 128)
    ...     done, block = int(done), block + 1
    """
    context = ops.where(done < window, done, window // 2)
    new = ops.minimum(ops.shape(tokens)[1] - done, window - context)
    steps = ops.convert_to_tensor(new if num_steps is None else num_steps, "int32")
    block_seed = ops.convert_to_tensor(sampler_seed(seed, block))
    out, calls = sample_window(tokens[:, done - context: done + new], block_seed, steps)
    tokens = ops.concatenate([tokens[:, :done], out[:, context:], tokens[:, done + new:]], axis=1)
    return tokens, done + new, calls
