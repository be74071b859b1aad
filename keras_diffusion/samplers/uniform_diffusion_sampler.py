"""Ancestral sampling of uniform-noise discrete diffusion (D3PM-uniform)."""

from keras import ops

from keras_diffusion.objectives import uniform_posterior_log_probs
from keras_diffusion.samplers.masked_diffusion_sampler import MaskedDiffusionSampler
from keras_diffusion.samplers.masked_diffusion_sampler import gumbel_noise
from keras_diffusion.samplers.masked_diffusion_sampler import uniform_noise
from keras_diffusion.schedules.schedule import register


@register
class UniformDiffusionSampler(MaskedDiffusionSampler):
    """Ancestral sampler of uniform-noise diffusion.

    The same contract as `MaskedDiffusionSampler`: the positions holding
    `mask_id` are generated, the others stay fixed. The generated positions
    start as uniform random tokens (z_1 is uniform: `alpha(1) = 0`); from
    t = 1 down to 0 on `num_steps` uniform steps t -> s = t - 1/K, every
    generated token is redrawn from D3PM's step
    `q(z_s | z_t, x = x_theta(z_t))`
    (`keras_diffusion.objectives.uniform_posterior_log_probs`), the reverse
    process whose NELBO `objectives.uniform_diffusion_loss` is. Every token
    may change at every step, so there is no caching. Keeping the given
    tokens clean is the replacement method of infilling (a given token is
    what the noise keeps most often).

    The draws come from `keras_diffusion.random.step_noise`: stream 0 the
    starting tokens, stream k + 1 the Gumbel noise of step k. The loop is
    one `ops.fori_loop`.

    Args:
        temperature: divides the denoiser's log-probabilities; 0 means
            greedy (the denoiser's argmax token in place of its
            distribution; the step's draw stays random).
        top_k: keep only the k most likely tokens of the denoiser
            (None: all).

    Example:
    >>> sampler = UniformDiffusionSampler(temperature=0.8)
    >>> tokens = sampler.sample(network, z, schedule=MaskingSchedule(),
    ...                         mask_id=29, num_steps=64, seed=0,
    ...                         vocabulary_size=29)

    References:
        Austin et al., Structured Denoising Diffusion Models in Discrete
        State-Spaces, 2021.
        Schiff et al., Simple Guidance Mechanisms for Discrete Diffusion
        Models, 2024.
    """

    def __init__(self, temperature=1.0, top_k=None):
        super().__init__(temperature=temperature, top_k=top_k, cache=False)

    def _denoiser(self, logits):
        """The tempered, top-k log-probabilities of x0 (normalized)."""
        log_probs = self._top_k(ops.log_softmax(ops.cast(logits, "float32"), axis=-1))
        if self.temperature == 0.0:
            best = ops.one_hot(ops.argmax(log_probs, axis=-1), ops.shape(log_probs)[-1])
            return ops.where(best > 0.5, 0.0, -1e9)
        return ops.log_softmax(log_probs / self.temperature, axis=-1)

    def sample(self, network, tokens, *, schedule, mask_id, num_steps, seed=0,
               vocabulary_size=None, return_num_calls=False):
        """Generates the `mask_id` positions of `tokens`.

        Args:
            network: `network(z_t, t) -> logits (B, L, N)` over the N tokens.
            tokens: int `(B, L)`: `mask_id` where a token is generated, the
                given tokens (in [0, N)) elsewhere.
            schedule: a `MaskingSchedule` (its `alpha(t)`: P(a token is
                kept)).
            mask_id: the placeholder id of the positions to generate.
            num_steps: K >= 1 (an int, or a scalar int tensor in a graph).
            seed: an int or scalar int tensor.
            vocabulary_size: N, the logits' width (None: found by one call).
            return_num_calls: also return how many times the network ran
                (K).

        Returns:
            int32 tokens `(B, L)` in [0, N) (and the number of network calls).
        """
        tokens = ops.cast(tokens, "int32")
        shape = ops.shape(tokens)
        k_steps = ops.cast(num_steps, "float32")
        num_tokens = vocabulary_size
        if num_tokens is None:
            num_tokens = network(ops.zeros_like(tokens[:1]), ops.ones((1,), "float32")).shape[-1]
        given = ops.not_equal(tokens, mask_id)
        start = ops.floor(uniform_noise(shape, seed, 0) * num_tokens)
        start = ops.cast(ops.clip(start, 0, num_tokens - 1), "int32")
        z = ops.where(given, tokens, start)

        def body(i, z):
            t = 1.0 - ops.cast(i, "float32") / k_steps
            s = 1.0 - ops.cast(i + 1, "float32") / k_steps
            log_x0 = self._denoiser(network(z, ops.full((shape[0],), t, "float32")))
            log_zs = uniform_posterior_log_probs(log_x0, z, t, s, schedule)
            gumbel = gumbel_noise(ops.shape(log_zs), seed, i + 1)
            new = ops.cast(ops.argmax(log_zs + gumbel, axis=-1), "int32")
            return ops.where(given, z, new)

        z = ops.fori_loop(0, num_steps, body, z)
        if return_num_calls:
            return z, ops.convert_to_tensor(num_steps, "int32")
        return z

    def get_config(self):
        return {"temperature": self.temperature, "top_k": self.top_k}
