"""Ancestral sampling of masked (absorbing-state) diffusion, MDLM's sampler."""

import math

from keras import ops

from keras_diffusion.objectives import subs_log_probs
from keras_diffusion.random import step_noise
from keras_diffusion.schedules.schedule import register


def uniform_noise(shape, seed, stream):
    """Uniforms in (0, 1) for stream `stream`, reproducible from `seed`:
    the normal CDF of `keras_diffusion.random.step_noise`."""
    z = step_noise(shape, seed, stream)
    u = 0.5 * (1.0 + ops.erf(z / math.sqrt(2.0)))
    return ops.clip(u, 1e-7, 1.0 - 1e-7)


def gumbel_noise(shape, seed, stream):
    """Gumbel(0, 1) noise from `uniform_noise`: argmax(log p + g) draws from p."""
    return -ops.log(-ops.log(uniform_noise(shape, seed, stream)))


@register
class MaskedDiffusionSampler:
    """Ancestral sampler of masked diffusion with the SUBS denoiser.

    From t = 1 down to 0 on `num_steps` uniform steps t -> s = t - 1/K, each
    still-masked token is revealed with probability
    `(alpha(s) - alpha(t)) / (1 - alpha(t))` as a token drawn from the
    denoiser's distribution (MDLM, eq. 7); revealed tokens never change
    (SUBS carry-over), so the tokens given at the start (a prefix, the known
    part of an infilling) stay fixed. At s = 0 every remaining mask is
    revealed.

    Caching (MDLM, section 3.4): when no token changed in a step and the
    network is not time-conditioned, its input is the same, so the previous
    distribution is reused and the network is not called (`ops.cond`).

    The draws come from `keras_diffusion.random.step_noise` (streams 2k and
    2k + 1 at step k: the token's Gumbel noise and the reveal decision), so a
    seed gives the same tokens eagerly, in `tf.function` and in a SavedModel.
    The loop is one `ops.fori_loop`.

    Args:
        temperature: divides the log-probabilities; 0 means greedy (argmax
            token; which positions are revealed stays random).
        top_k: sample only among the k most likely tokens (None: all).
        cache: skip the network when no token changed (ignored, always
            off, for a time-conditioned network: pass `cache=False` then).

    Example:
    >>> sampler = MaskedDiffusionSampler(temperature=0.8, top_k=10)
    >>> tokens = sampler.sample(network, z, schedule=MaskingSchedule(),
    ...                         mask_id=30, num_steps=64, seed=0)

    References:
        Sahoo et al., Simple and Effective Masked Diffusion Language Models,
        2024.
        Austin et al., Structured Denoising Diffusion Models in Discrete
        State-Spaces, 2021 (D3PM's absorbing state).
    """

    def __init__(self, temperature=1.0, top_k=None, cache=True):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature >= 0
        ):
            raise ValueError(
                f"`temperature` must be a float >= 0, received temperature={temperature!r}"
            )
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"`top_k` must be None or an int >= 1, received top_k={top_k!r}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.cache = bool(cache)

    def _top_k(self, log_probs):
        """The log-probabilities outside the `top_k` largest set to -1e9."""
        if self.top_k is None:
            return log_probs
        k = min(self.top_k, log_probs.shape[-1])
        kth = ops.top_k(log_probs, k)[0][..., -1:]
        return ops.where(log_probs < kth, -1e9, log_probs)

    def _propose(self, log_probs, seed, step):
        """A token per position from the (tempered, top-k) distribution."""
        log_probs = self._top_k(log_probs)
        if self.temperature == 0.0:
            return ops.argmax(log_probs, axis=-1)
        gumbel = gumbel_noise(ops.shape(log_probs), seed, 2 * step)
        return ops.argmax(log_probs / self.temperature + gumbel, axis=-1)

    def sample(self, network, tokens, *, schedule, mask_id, num_steps, seed=0,
               vocabulary_size=None, return_num_calls=False):
        """Fills the masked positions of `tokens`.

        Args:
            network: `network(z_t, t) -> logits (B, L, V)`.
            tokens: int `(B, L)`: `mask_id` where a token is generated, the
                given tokens elsewhere.
            schedule: a `MaskingSchedule`.
            mask_id: the mask token's id.
            num_steps: K >= 1 (an int, or a scalar int tensor in a graph).
            seed: an int or scalar int tensor.
            vocabulary_size: the logits' width V (None: found by one call).
            return_num_calls: also return how many times the network ran.

        Returns:
            int32 tokens `(B, L)` without masks (and the number of network
            calls).
        """
        tokens = ops.cast(tokens, "int32")
        shape = ops.shape(tokens)
        k_steps = ops.cast(num_steps, "float32")

        def predict(z, t):
            times = ops.full((shape[0],), t, "float32")
            return subs_log_probs(network(z, times), z, mask_id)

        def body(i, state):
            z, cached, stale, calls = state
            t = 1.0 - ops.cast(i, "float32") / k_steps
            s = 1.0 - ops.cast(i + 1, "float32") / k_steps
            if self.cache:
                log_probs = ops.cond(stale, lambda: predict(z, t), lambda: cached)
            else:
                log_probs = predict(z, t)
            calls = calls + ops.cast(stale, "int32") if self.cache else calls + 1
            proposal = ops.cast(self._propose(log_probs, seed, i), "int32")
            alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
            # Eq. 7: P(reveal | masked) = (alpha_s - alpha_t) / (1 - alpha_t).
            reveal_p = (alpha_s - alpha_t) / ops.maximum(1.0 - alpha_t, 1e-12)
            reveal = uniform_noise(shape, seed, 2 * i + 1) < reveal_p
            reveal = ops.logical_or(reveal, ops.equal(i + 1, ops.cast(num_steps, "int32")))
            new = ops.where(ops.logical_and(ops.equal(z, mask_id), reveal), proposal, z)
            changed = ops.any(ops.not_equal(new, z))
            return new, log_probs, changed, calls

        vocab = vocabulary_size
        if vocab is None:
            vocab = network(tokens[:1], ops.ones((1,), "float32")).shape[-1]
        init = (
            tokens,
            ops.zeros((shape[0], shape[1], vocab), "float32"),
            ops.convert_to_tensor(True),
            ops.convert_to_tensor(0, "int32"),
        )
        z, _, _, calls = ops.fori_loop(0, num_steps, body, init)
        return (z, calls) if return_num_calls else z

    def get_config(self):
        return {"temperature": self.temperature, "top_k": self.top_k, "cache": self.cache}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

