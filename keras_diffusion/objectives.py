"""Prediction types, training targets, loss weightings and time distributions.

The math of what a denoiser predicts is written here once. With
x_t = alpha x0 + sigma eps the five prediction types are

- "epsilon": eps
- "x0": x0
- "v": alpha eps - sigma x0 (Salimans & Ho, 2022)
- "flow": d x_t / dt = alpha' x0 + sigma' eps (for rectified flow, eps - x0)
- "score": grad log p_t(x_t) = -eps / sigma (Song et al., 2021)

Given x_t, any prediction determines the pair (x0, eps), and the pair
determines every prediction, so every conversion goes through
`to_x0_epsilon` and `from_x0_epsilon`.
"""

import math

from keras import ops
from keras import random

from keras_diffusion.schedules.schedule import broadcast_like

PREDICTIONS = ("epsilon", "x0", "v", "flow", "score")
WEIGHTINGS = ("none", "min_snr", "elbo", "edm")
TIME_DISTRIBUTIONS = ("uniform", "logit_normal", "low_discrepancy", "edm")
# EDM's training distribution of noise levels, ln sigma ~ N(P_mean, P_std^2)
# (Karras et al., 2022, Table 1).
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2
# The score -eps / sigma divides by sigma, which is 0 at t = 0: the targets
# and error scales of "score" use max(sigma, SCORE_MIN_SIGMA). No schedule
# trains or samples at sigma below it (t_min gives sigma >= 1e-3), so it only
# keeps t = 0 finite. Its variance grows as 1 / sigma^2 at small t: train a
# score model with weighting="min_snr" or "elbo" (which reweigh it by sigma^2
# up to bounded factors), not "none".
SCORE_MIN_SIGMA = 1e-4


def validate_prediction(prediction):
    """Returns `prediction` if it is a known prediction type, else raises."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"Unknown `prediction`: {prediction!r}. Valid names: {list(PREDICTIONS)}"
        )
    return prediction


def _coefficients(schedule, t, x, with_derivatives=False):
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    alpha, sigma = schedule.alpha_sigma(t)
    out = [alpha, sigma]
    if with_derivatives:
        out += list(schedule.alpha_sigma_derivatives(t))
    return [ops.cast(broadcast_like(c, x), x.dtype) for c in out]


def to_x0_epsilon(prediction, output, x_t, t, schedule):
    """Converts a model output to the pair (x0, eps) it implies at (x_t, t).

    Args:
        prediction: what `output` is: "epsilon", "x0", "v", "flow" or
            "score".
        output: the model's prediction, shaped like `x_t`.
        x_t: the noisy input.
        t: times, shape `[batch]` or a scalar.
        schedule: a `keras_diffusion.schedules.Schedule`.

    Returns:
        `(x0, eps)`, each shaped like `x_t`.
    """
    validate_prediction(prediction)
    x_t = ops.convert_to_tensor(x_t)
    output = ops.cast(output, x_t.dtype)
    if prediction == "flow":
        alpha, sigma, d_alpha, d_sigma = _coefficients(schedule, t, x_t, True)
        # Solve [alpha sigma; alpha' sigma'] [x0; eps] = [x_t; flow].
        det = alpha * d_sigma - sigma * d_alpha
        return (
            (d_sigma * x_t - sigma * output) / det,
            (alpha * output - d_alpha * x_t) / det,
        )
    alpha, sigma = _coefficients(schedule, t, x_t)
    if prediction == "score":
        # eps = -sigma s: no division by sigma, finite at t = 0.
        output = -sigma * output
        prediction = "epsilon"
    if prediction == "epsilon":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    # v = alpha eps - sigma x0, for any alpha and sigma.
    norm = ops.square(alpha) + ops.square(sigma)
    return (
        (alpha * x_t - sigma * output) / norm,
        (sigma * x_t + alpha * output) / norm,
    )


def from_x0_epsilon(prediction, x0, eps, t, schedule):
    """The `prediction` implied by (x0, eps) at time t: the training target.

    Args:
        prediction: "epsilon", "x0", "v", "flow" or "score" (with sigma
            floored at `SCORE_MIN_SIGMA`).
        x0: clean data.
        eps: the noise.
        t: times, shape `[batch]` or a scalar.
        schedule: a `keras_diffusion.schedules.Schedule`.

    Returns:
        The target, shaped like `x0`.
    """
    validate_prediction(prediction)
    x0 = ops.convert_to_tensor(x0)
    eps = ops.cast(eps, x0.dtype)
    if prediction == "x0":
        return x0
    if prediction == "epsilon":
        return eps
    if prediction == "v":
        alpha, sigma = _coefficients(schedule, t, x0)
        return alpha * eps - sigma * x0
    if prediction == "score":
        _, sigma = _coefficients(schedule, t, x0)
        return -eps / ops.maximum(sigma, SCORE_MIN_SIGMA)
    _, _, d_alpha, d_sigma = _coefficients(schedule, t, x0, True)
    return d_alpha * x0 + d_sigma * eps


def convert(output, x_t, t, schedule, source, target):
    """Converts a prediction of type `source` into one of type `target`.

    Example:
    >>> v = convert(eps_hat, x_t, t, schedule, source="epsilon", target="v")
    """
    validate_prediction(source)
    validate_prediction(target)
    if source == target:
        return output
    x0, eps = to_x0_epsilon(source, output, x_t, t, schedule)
    return from_x0_epsilon(target, x0, eps, t, schedule)


def x0_error_scale(prediction, t, schedule):
    """The factor c(t) with ||pred - target||^2 = c(t) ||x0_hat - x0||^2.

    At fixed x_t every prediction is an affine function of x0_hat, so a
    squared error in any prediction space is a time-dependent multiple of the
    squared error in x0: 1 for "x0", SNR for "epsilon",
    (alpha^2 + sigma^2)^2 / sigma^2 for "v",
    (alpha' sigma - sigma' alpha)^2 / sigma^2 for "flow" and
    alpha^2 / sigma^4 for "score" (sigma floored at `SCORE_MIN_SIGMA`).
    """
    validate_prediction(prediction)
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    alpha, sigma = schedule.alpha_sigma(t)
    if prediction == "x0":
        return ops.ones_like(t)
    if prediction == "epsilon":
        return ops.exp(schedule.log_snr(t))
    if prediction == "v":
        return ops.square(ops.square(alpha) + ops.square(sigma)) / ops.square(sigma)
    if prediction == "score":
        return ops.square(alpha) / ops.square(ops.square(ops.maximum(sigma, SCORE_MIN_SIGMA)))
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)
    return ops.square(d_alpha * sigma - d_sigma * alpha) / ops.square(sigma)


def loss_weight(weighting, prediction, t, schedule, gamma=5.0):
    """Per-example weight of the squared error of a `prediction`-type model.

    Args:
        weighting: "none": weight 1 in the prediction's own space, except
            for "flow", whose error is divided by max(m(t), 1), with
            m = (alpha'^2 + sigma'^2) / 2 the target's mean square per
            dimension for unit-variance x0. m = 1 on rectified flow, so its
            weight is exactly 1; on "linear" and "scaled_linear" sigma' grows
            as 1 / sqrt(t), so the raw flow loss has an unbounded variance
            at small t (its expectation over uniform t diverges
            logarithmically), which the division removes. Where m < 1 (high
            noise on VP schedules) the weight stays 1: dividing there too
            (up to 500x on "linear" near t = 1) trained worse on toy2d.
            With a `shift` s on rectified flow the target is u' (eps - x0),
            u' = dt'/dt from s down to 1 / s: the weight is 1 / u'^2 (SD3's
            loss on eps - x0) where u' > 1, and 1 where u' < 1.
            "min_snr": min(SNR, gamma) in x0 space (Hang et al., 2023), which
            is min(SNR, gamma) / SNR for epsilon and min(SNR, gamma) / (SNR + 1)
            for v on a VP schedule; "elbo": -1/2 d log_snr/dt in eps space,
            which makes E_{t ~ U(0, 1)}[weight * sum of squared errors] the
            continuous-time diffusion loss of the ELBO in nats (Kingma et al.,
            2021, eq. 17). For t drawn from another distribution divide by its
            density. "edm": EDM's lambda(sigma) = (sigma^2 + sigma_data^2) /
            (sigma sigma_data)^2 in x0 space (Karras et al., 2022, Table 1),
            with sigma = sigma(t) / alpha(t) and `schedule.sigma_data` (0.5
            for schedules without one); with EDM's preconditioning it weighs
            the raw network's error by 1.
        prediction: the model's prediction type.
        t: times, shape `[batch]`.
        schedule: a `keras_diffusion.schedules.Schedule`.
        gamma: the min-SNR clip.

    Returns:
        Weights of shape `[batch]`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"Unknown `weighting`: {weighting!r}. Valid names: {list(WEIGHTINGS)}"
        )
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    if weighting == "none":
        if prediction == "flow":
            d_alpha, d_sigma = schedule.alpha_sigma_derivatives(t)
            return 1.0 / ops.maximum(0.5 * (ops.square(d_alpha) + ops.square(d_sigma)), 1.0)
        return ops.ones_like(t)
    scale = x0_error_scale(prediction, t, schedule)
    snr = ops.exp(schedule.log_snr(t))
    if weighting == "min_snr":
        if gamma <= 0:
            raise ValueError(f"`gamma` must be positive, received gamma={gamma}")
        return ops.minimum(snr, gamma) / scale
    if weighting == "edm":
        sigma_data = float(getattr(schedule, "sigma_data", 0.5))
        sigma_sq = 1.0 / snr  # (sigma / alpha)^2
        return (sigma_sq + sigma_data**2) / (sigma_sq * sigma_data**2) / scale
    return -0.5 * schedule.d_log_snr(t) * snr / scale


def sample_time(distribution, batch_size, schedule, seed=None, loc=0.0, scale=1.0):
    """Draws training times in [schedule.t_min, 1].

    Args:
        distribution: "uniform"; "logit_normal", t = sigmoid(loc + scale * n)
            (Esser et al., 2024); "low_discrepancy", one uniform offset
            shifted by i / batch_size per example, which lowers the variance of
            the loss estimate (Kingma et al., 2021, appendix I.1); or "edm",
            ln(sigma / alpha) ~ N(EDM_P_MEAN, EDM_P_STD^2) = N(-1.2, 1.2^2)
            (Karras et al., 2022), mapped to t by `schedule.t_from_log_snr`
            and clipped to [t_min, 1] (`loc` and `scale` are not used).
        batch_size: number of times to draw (an int or a scalar tensor).
        schedule: the schedule; its `t_min` bounds the times from below.
        seed: a seed for `keras.random`.
        loc, scale: logit-normal parameters.

    Returns:
        float32 times of shape `[batch_size]`.
    """
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(
            f"Unknown time `distribution`: {distribution!r}. "
            f"Valid names: {list(TIME_DISTRIBUTIONS)}"
        )
    if distribution == "uniform":
        u = random.uniform((batch_size,), seed=seed)
    elif distribution == "logit_normal":
        u = ops.sigmoid(loc + scale * random.normal((batch_size,), seed=seed))
    elif distribution == "edm":
        log_sigma = EDM_P_MEAN + EDM_P_STD * random.normal((batch_size,), seed=seed)
        t = schedule.t_from_log_snr(-2.0 * log_sigma)
        return ops.clip(t, schedule.t_min, 1.0)
    else:
        offset = random.uniform((), seed=seed)
        # `batch_size` may be a tensor (a dynamic batch in a graph).
        steps = ops.cast(ops.arange(batch_size), "float32")
        u = ops.mod(offset + steps / ops.cast(batch_size, "float32"), 1.0)
    return schedule.t_min + (1.0 - schedule.t_min) * u


def time_density(distribution, t, schedule, loc=0.0, scale=1.0):
    """The density of `sample_time(distribution, ...)` at `t`.

    For "edm" it is the density inside (t_min, 1); the clipped tails are
    point masses at the ends.
    """
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(
            f"Unknown time `distribution`: {distribution!r}. "
            f"Valid names: {list(TIME_DISTRIBUTIONS)}"
        )
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    width = 1.0 - schedule.t_min
    if distribution == "edm":
        # ln(sigma/alpha) = -log_snr / 2 is normal: p(t) = N(.) |d log_snr/dt| / 2.
        z = (-0.5 * schedule.log_snr(t) - EDM_P_MEAN) / EDM_P_STD
        normal = ops.exp(-0.5 * ops.square(z)) / (EDM_P_STD * (2 * math.pi) ** 0.5)
        inside = (t > schedule.t_min) & (t < 1.0)
        return ops.where(inside, normal * 0.5 * ops.abs(schedule.d_log_snr(t)), 0.0)
    if distribution != "logit_normal":
        return ops.ones_like(t) / width
    u = (t - schedule.t_min) / width
    inside = (u > 0.0) & (u < 1.0)
    u = ops.where(inside, u, 0.5)
    z = (ops.log(u) - ops.log1p(-u) - loc) / scale
    normal = ops.exp(-0.5 * ops.square(z)) / (scale * (2 * math.pi) ** 0.5)
    return ops.where(inside, normal / (u * (1.0 - u)) / width, 0.0)


def diffusion_loss(
    predict,
    x0,
    noise,
    t,
    *,
    schedule,
    prediction,
    weighting="none",
    time_distribution="uniform",
    gamma=5.0,
    loc=0.0,
    scale=1.0,
):
    """The per-example training loss of a diffusion model, shape `[batch]`.

    x_t = alpha(t) x0 + sigma(t) eps is formed, `predict(x_t, t)` is
    regressed on the `prediction` target with the squared error averaged
    over the non-batch axes, and weighted by `loss_weight(weighting, ...)`.
    For `weighting="elbo"` the weight is divided by the density of the time
    distribution the times were drawn from, so the expected loss is the
    continuous-time diffusion ELBO term per dimension in nats (Kingma et al.,
    2021, eq. 17) whatever the distribution.

    Args:
        predict: `predict(x_t, t) -> output` (the denoiser with its condition).
        x0: clean data `(B, ...)`, float32.
        noise: eps, shaped like `x0`.
        t: times `(B,)`.
        schedule: a `Schedule`.
        prediction: the denoiser's prediction type.
        weighting: "none", "min_snr" or "elbo".
        time_distribution: the distribution `t` was drawn from (for "elbo").
        gamma: the min-SNR clip.
        loc, scale: logit-normal parameters of the time distribution.

    Returns:
        The weighted squared errors, float32 `(B,)`.

    Example:
    >>> losses = diffusion_loss(lambda x, t: net({"x_t": x, "t": t}), x0, eps, t,
    ...                         schedule=CosineSchedule(), prediction="v")
    """
    x_t = schedule.add_noise(x0, noise, t)
    target = from_x0_epsilon(prediction, x0, noise, t, schedule)
    output = ops.cast(predict(x_t, t), "float32")
    error = ops.square(output - target)
    error = ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=1)
    weight = loss_weight(weighting, prediction, t, schedule, gamma=gamma)
    if weighting == "elbo":
        # Clip t off the ends, where the logit-normal density is 0 in
        # float32 and the weight would be inf.
        inner = ops.clip(t, schedule.t_min + 1e-5, 1.0 - 1e-5)
        weight = weight / time_density(time_distribution, inner, schedule, loc=loc, scale=scale)
    return weight * error


# ----------------------------------------------------------------------
# Masked (absorbing-state) discrete diffusion: MDLM
# ----------------------------------------------------------------------
# Masked-token cross-entropy at times below this is weighted as at this time
# (the weight 1/t of the log-linear schedule is unbounded at t = 0).
MASKED_T_MIN = 1e-4
_NEG_INF = -1e9


def subs_log_probs(logits, z_t, mask_id):
    """MDLM's SUBS parameterization: the denoiser's log-probabilities of x0.

    Two substitutions (Sahoo et al., 2024, section 3.2.3): the mask token
    gets zero probability (a masked position never predicts the mask), and
    an unmasked position's distribution is the one-hot of its token (carry
    over: unmasked tokens are copied through).

    Args:
        logits: the network's logits `(B, L, V)` over the vocabulary with
            the mask token `mask_id` among them.
        z_t: the noisy tokens `(B, L)` the network saw.
        mask_id: the mask token's id.

    Returns:
        float32 log-probabilities `(B, L, V)`.
    """
    logits = ops.cast(logits, "float32")
    vocab = ops.shape(logits)[-1]
    is_mask_class = ops.equal(ops.arange(vocab), mask_id)
    logits = ops.where(is_mask_class[None, None, :], _NEG_INF, logits)
    log_probs = ops.log_softmax(logits, axis=-1)
    copied = ops.where(ops.one_hot(z_t, vocab) > 0.5, 0.0, _NEG_INF)
    unmasked = ops.not_equal(z_t, mask_id)[..., None]
    return ops.where(unmasked, copied, log_probs)


def mask_tokens(tokens, t, uniforms, schedule, mask_id):
    """z_t ~ q(z_t | x): each token masked with probability 1 - alpha(t).

    Args:
        tokens: int `(B, L)` clean tokens.
        t: `(B,)` times.
        uniforms: `(B, L)` uniforms in [0, 1) deciding which tokens move.
        schedule: a `MaskingSchedule`.
        mask_id: the mask token's id.

    Returns:
        `(z_t, masked)`: the noisy tokens and the bool mask of moved tokens.
    """
    masked = uniforms < schedule.mask_probability(t)[:, None]
    z_t = ops.where(masked, ops.cast(mask_id, tokens.dtype), tokens)
    return z_t, masked


def masked_diffusion_loss(network, tokens, t, uniforms, schedule, mask_id):
    """The continuous-time negative ELBO of masked diffusion, per sequence.

    MDLM's objective (Sahoo et al., 2024, eq. 10): with z_t ~ q(z_t | x),

        NELBO(x) = E_t [ -alpha'(t) / (1 - alpha(t))
                         * sum_{l: z_t^l = m} -log p_theta(x^l | z_t) ],

    p_theta from `subs_log_probs`; a single-sample estimate at the given t
    (unbiased for t ~ U(0, 1)). The prior term is zero (alpha(1) = 0: z_1 is
    all mask) and so is the reconstruction term (unmasked tokens are copied).

    Args:
        network: `network(z_t, t) -> logits (B, L, V)`.
        tokens: int `(B, L)` clean tokens (values in [0, V), never `mask_id`).
        t: `(B,)` times in (0, 1].
        uniforms: `(B, L)` uniforms that pick the masked tokens.
        schedule: a `MaskingSchedule`.
        mask_id: the mask token's id.

    Returns:
        float32 `(B,)`: the NELBO estimate of each sequence, in nats.
    """
    t = ops.clip(ops.cast(t, "float32"), MASKED_T_MIN, 1.0)
    z_t, masked = mask_tokens(tokens, t, uniforms, schedule, mask_id)
    log_probs = subs_log_probs(network(z_t, t), z_t, mask_id)
    log_p = ops.take_along_axis(log_probs, ops.cast(tokens, "int32")[..., None], axis=-1)
    cross_entropy = -ops.sum(log_p[..., 0] * ops.cast(masked, "float32"), axis=1)
    return schedule.elbo_weight(t) * cross_entropy


# ----------------------------------------------------------------------
# Uniform-noise discrete diffusion: D3PM-uniform in continuous time
# ----------------------------------------------------------------------
def uniform_log_marginal(log_probs, t, schedule):
    """`log(N q_t(. | x))` of uniform noise, for x a distribution.

    `q_t(. | x) = alpha x + (1 - alpha) / N` (Austin et al., 2021): each
    token kept with probability `alpha`, else replaced by a uniform draw
    among the N tokens (possibly itself). Written as a `logaddexp` of
    `alpha(t)` and `schedule.mask_probability(t)` (1 - alpha, computed
    without cancellation) so that it stays accurate for alpha near 0 and
    near 1.

    Args:
        log_probs: `(B, L, N)` log-probabilities of x (a one-hot as 0 and a
            large negative number).
        t: `(B,)` times.
        schedule: a `MaskingSchedule` (its `alpha(t)`: P(a token is kept)).

    Returns:
        float32 `(B, L, N)`: `log(N alpha x + 1 - alpha)`.
    """
    alpha = schedule.alpha(t)[:, None, None]
    moved = schedule.mask_probability(t)[:, None, None]
    n = ops.cast(ops.shape(log_probs)[-1], "float32")
    return ops.logaddexp(ops.log(n * alpha) + log_probs, ops.log(moved))


def uniform_noise_tokens(tokens, t, uniforms, schedule, num_tokens):
    """z_t ~ q(z_t | x) of uniform noise: with probability 1 - alpha(t) a
    token is replaced by one drawn uniformly among `num_tokens`.

    One uniform per token does both: `u < 1 - alpha` picks the replaced
    tokens, and `u / (1 - alpha)`, uniform in [0, 1) given that, the new one.

    Args:
        tokens: int `(B, L)` clean tokens in [0, num_tokens).
        t: `(B,)` times.
        uniforms: `(B, L)` uniforms in [0, 1).
        schedule: a `MaskingSchedule` (its `alpha(t)`: P(a token is kept)).
        num_tokens: N, the number of tokens the noise draws from.

    Returns:
        int `(B, L)`: the noisy tokens.
    """
    moved = ops.maximum(schedule.mask_probability(t), 1e-12)[:, None]
    draw = ops.floor(uniforms / moved * num_tokens)
    draw = ops.cast(ops.clip(draw, 0, num_tokens - 1), tokens.dtype)
    return ops.where(uniforms < moved, draw, tokens)


def uniform_diffusion_loss(network, tokens, t, uniforms, schedule, num_tokens):
    """The continuous-time negative ELBO of uniform-noise diffusion, per sequence.

    The forward process is the CTMC whose marginal is
    `q_t(. | x) = alpha(t) x + (1 - alpha(t)) / N` (D3PM-uniform, Austin et
    al., 2021, in continuous time): a token jumps to each of the N tokens
    at rate `beta(t) / N`, `beta = -alpha' / alpha`. The model's reverse
    step is D3PM's: `p(z_s | z_t) = q(z_s | z_t, x = x_theta(z_t))` with the
    denoiser's distribution `x_theta` in place of x, whose rates are
    `beta / N * xbar_theta[y] / xbar_theta[z_t]` for
    `xbar = N alpha x + 1 - alpha` (`uniform_log_marginal`). The NELBO is the
    KL between the forward path given x and the model's (Campbell et al.,
    2022; Lou et al., 2024, whose score entropy this is with the score
    `xbar_theta[y] / xbar_theta[z_t]`):

        NELBO(x) = E_t E_{z_t ~ q_t(.|x)} [ beta(t) / N * sum_l sum_y
                   r[y] (exp(w[y]) - 1 - w[y]) ],
        r[y] = xbar[y] / xbar[z_t],  w[y] = log(xbar_theta[y] / xbar_theta[z_t]) - log r[y],

    the same as Schiff et al. (2024, UDLM) write it. Each term is >= 0. The
    bound is tight (NELBO(x) = -log p(x)) when the model's rates are the
    exact reverse rates `beta / N * q_t(y) / q_t(z_t)`, which this
    parameterization reaches with `x_theta` at position l equal to
    `p(x^l | z_t^{-l})`, the posterior given the other positions. The prior term is zero
    (`alpha(1) = 0`: z_1 is uniform, the sampler's start) and so is the
    reconstruction term (z_0 = x). A single-sample estimate at the given t
    (unbiased for t ~ U(0, 1)). t is clipped to [1e-4, 1 - 1e-4]: the
    integrand is bounded near t = 0 and O(alpha) near t = 1, so the clipping
    moves the integral by at most 1e-4 times the integrand's bound.

    Args:
        network: `network(z_t, t) -> logits (B, L, N)` over the N tokens.
        tokens: int `(B, L)` clean tokens in [0, N).
        t: `(B,)` times in (0, 1).
        uniforms: `(B, L)` uniforms that pick the noisy tokens
            (`uniform_noise_tokens`).
        schedule: a `MaskingSchedule` (its `alpha(t)`: P(a token is kept)).
        num_tokens: N, the logits' width and the tokens the noise draws from.

    Returns:
        float32 `(B,)`: the NELBO estimate of each sequence, in nats.

    References:
        Austin et al., Structured Denoising Diffusion Models in Discrete
        State-Spaces, 2021.
        Campbell et al., A Continuous Time Framework for Discrete Denoising
        Models, 2022.
        Lou et al., Discrete Diffusion Modeling by Estimating the Ratios of
        the Data Distribution, 2024.
        Schiff et al., Simple Guidance Mechanisms for Discrete Diffusion
        Models, 2024.
    """
    t = ops.clip(ops.cast(t, "float32"), MASKED_T_MIN, 1.0 - MASKED_T_MIN)
    tokens = ops.cast(tokens, "int32")
    z_t = uniform_noise_tokens(tokens, t, uniforms, schedule, num_tokens)
    log_x0 = ops.log_softmax(ops.cast(network(z_t, t), "float32"), axis=-1)
    one_hot = ops.one_hot(tokens, num_tokens) > 0.5
    log_data = uniform_log_marginal(ops.where(one_hot, 0.0, _NEG_INF), t, schedule)
    log_model = uniform_log_marginal(log_x0, t, schedule)
    index = z_t[..., None]
    log_r = log_data - ops.take_along_axis(log_data, index, axis=-1)
    w = log_model - ops.take_along_axis(log_model, index, axis=-1) - log_r
    # r (e^w - 1 - w) >= 0, with expm1 for w near 0 (t near 1).
    divergence = ops.sum(ops.exp(log_r) * (ops.expm1(w) - w), axis=(1, 2))
    beta = -schedule.alpha_derivative(t) / schedule.alpha(t)
    return beta / num_tokens * divergence


def uniform_posterior_log_probs(log_probs, z_t, t, s, schedule):
    """log p(z_s | z_t) of uniform-noise diffusion, s < t: D3PM's step
    `q(z_s | z_t, x)` with the denoiser's distribution in place of x.

    `q(z_s = y | z_t, x) ∝ q(z_t | z_s = y) q(z_s = y | x)`, with
    `N q(z_t | z_s = y) = N alpha_{t|s} [y = z_t] + 1 - alpha_{t|s}`,
    `alpha_{t|s} = alpha_t / alpha_s` (Austin et al., 2021, eq. 3) and
    `q(z_s | x)` from `uniform_log_marginal`. Both factors are linear in x,
    so a distribution p in place of x gives the exact posteriors mixed with
    weights `p(x) q(z_t | x)` (D3PM's x0-parameterization).

    Args:
        log_probs: `(B, L, N)` the denoiser's log-probabilities of x.
        z_t: int `(B, L)` the current tokens.
        t, s: scalar times, `0 <= s < t <= 1`.
        schedule: a `MaskingSchedule` (its `alpha(t)`: P(a token is kept)).

    Returns:
        float32 `(B, L, N)` normalized log-probabilities of z_s.
    """
    n = ops.shape(log_probs)[-1]
    alpha_s = schedule.alpha(s)
    # 1 - alpha_{t|s} = (alpha_s - alpha_t) / alpha_s, from the mask
    # probabilities (no cancellation near t = 0).
    jumped = (schedule.mask_probability(t) - schedule.mask_probability(s)) / alpha_s
    stay = ops.log(ops.cast(n, "float32") * schedule.alpha(t) / alpha_s + jumped)
    transition = ops.where(ops.one_hot(z_t, n) > 0.5, stay, ops.log(jumped))
    s = ops.full((ops.shape(log_probs)[0],), s, "float32")
    return ops.log_softmax(transition + uniform_log_marginal(log_probs, s, schedule), axis=-1)
