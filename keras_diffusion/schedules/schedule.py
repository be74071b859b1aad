"""The noise-schedule contract that every schedule implements."""

import keras
from keras import ops


def broadcast_like(t, x):
    """Reshapes `t` of shape `[batch]` (or a scalar) to broadcast against `x`.

    Args:
        t: a scalar or a tensor of shape `[batch]`.
        x: a tensor of shape `[batch, ...]`.

    Returns:
        `t` with trailing unit axes added so that `t * x` is elementwise per
        example.
    """
    t = ops.convert_to_tensor(t)
    if len(t.shape) == 0:
        return t
    # -1 keeps an unknown (symbolic) batch size working.
    return ops.reshape(t, (-1,) + (1,) * (len(x.shape) - 1))


def _float(t):
    return ops.cast(ops.convert_to_tensor(t), "float32")


class Schedule:
    """Base class of noise schedules: x_t = alpha(t) * x0 + sigma(t) * eps.

    Time is continuous, `t` in [0, 1]: t=0 is data and t=1 is (nearly) pure
    noise. A subclass defines `log_snr(t)` = log(alpha^2 / sigma^2) (strictly
    decreasing), its inverse `t_from_log_snr`, `alpha_sigma(t)` and
    `alpha_sigma_derivatives(t)`. Everything else (noising, the posterior
    q(x_s | x_t, x0), its coefficients, the TFP distributions) is written once
    here in terms of those. All arithmetic is in float32 with `keras.ops`, so
    schedules run on every Keras backend; `marginal`, `posterior` and `prior`
    return `tensorflow_probability` distributions and need TensorFlow.

    Attributes:
        t_min: the smallest time at which a model is trained or evaluated
            (1/T for a discrete schedule with T training steps).
        prior_std: standard deviation of the prior p(x_1) = N(0, prior_std^2);
            samplers start from `prior_std * noise`.
        num_train_timesteps: T for a discrete schedule, else `None`.
    """

    num_train_timesteps = None
    prior_std = 1.0

    def __init__(self, t_min=1e-3):
        t_min = float(t_min)
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"`t_min` must be in [0, 1), received t_min={t_min}")
        self.t_min = t_min

    # --- what a subclass defines -------------------------------------------
    def log_snr(self, t):
        """log(alpha(t)^2 / sigma(t)^2), decreasing in t."""
        raise NotImplementedError

    def t_from_log_snr(self, log_snr):
        """The inverse of `log_snr`: the time at which log-SNR equals `log_snr`."""
        raise NotImplementedError

    def alpha_sigma(self, t):
        """Returns `(alpha(t), sigma(t))`."""
        raise NotImplementedError

    def alpha_sigma_derivatives(self, t):
        """Returns `(d alpha / dt, d sigma / dt)` at `t`."""
        raise NotImplementedError

    def d_log_snr(self, t):
        """d log_snr / dt (negative)."""
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.alpha_sigma_derivatives(t)
        return 2.0 * (d_alpha / alpha - d_sigma / sigma)

    # --- derived quantities, written once -----------------------------------
    def alpha(self, t):
        return self.alpha_sigma(t)[0]

    def sigma(self, t):
        return self.alpha_sigma(t)[1]

    def snr(self, t):
        return ops.exp(self.log_snr(t))

    def variance_exploding(self):
        """A bool scalar tensor: alpha(1) = 1 (VE, EDM), where x_t = x0 + sigma eps.

        Ops, not a Python bool, so that it also works inside a traced function.
        """
        return self.alpha(_float(1.0)) >= 1.0

    def add_noise(self, x0, noise, t):
        """Returns x_t = alpha(t) * x0 + sigma(t) * noise, `t` of shape [batch]."""
        alpha, sigma = self.alpha_sigma(_float(t))
        x0 = ops.convert_to_tensor(x0)
        alpha = ops.cast(broadcast_like(alpha, x0), x0.dtype)
        sigma = ops.cast(broadcast_like(sigma, x0), x0.dtype)
        return alpha * x0 + sigma * ops.cast(noise, x0.dtype)

    def transition(self, s, t):
        """Coefficients of q(x_t | x_s) for s < t: returns (alpha_t|s, sigma_t|s^2).

        x_t = alpha_t|s * x_s + sigma_t|s * z. The variance is computed as
        -sigma_t^2 * expm1(log_snr(t) - log_snr(s)), which stays accurate when
        s and t are close.
        """
        s, t = _float(s), _float(t)
        alpha_s, _ = self.alpha_sigma(s)
        alpha_t, sigma_t = self.alpha_sigma(t)
        delta = self.log_snr(t) - self.log_snr(s)
        return alpha_t / alpha_s, -ops.square(sigma_t) * ops.expm1(delta)

    def posterior_coefficients(self, s, t):
        """Coefficients of q(x_s | x_t, x0) for s < t (DDPM eq. 6-7, any schedule).

        Returns `(coef_x_t, coef_x0, variance)` with
        mean = coef_x_t * x_t + coef_x0 * x0. With d = log_snr(t) - log_snr(s):
        coef_x0 = -alpha_s * expm1(d), coef_x_t = (sigma_s / sigma_t) * exp(d / 2),
        variance = -sigma_s^2 * expm1(d). All three are finite at s = 0 where
        sigma_s = 0 (variance 0, mean alpha_0 * x0).
        """
        s, t = _float(s), _float(t)
        alpha_s, sigma_s = self.alpha_sigma(s)
        _, sigma_t = self.alpha_sigma(t)
        delta = self.log_snr(t) - self.log_snr(s)
        coef_x0 = -alpha_s * ops.expm1(delta)
        coef_x_t = (sigma_s / sigma_t) * ops.exp(0.5 * delta)
        variance = -ops.square(sigma_s) * ops.expm1(delta)
        return coef_x_t, coef_x0, variance

    # --- TensorFlow Probability distributions (TensorFlow only) -------------
    def marginal(self, x0, t):
        """q(x_t | x0) = N(alpha(t) x0, sigma(t)^2) as a `tfd.Normal`."""
        tfd = _tfd()
        x0 = ops.cast(x0, "float32")
        alpha, sigma = self.alpha_sigma(_float(t))
        return tfd.Normal(
            loc=broadcast_like(alpha, x0) * x0,
            scale=broadcast_like(sigma, x0) * ops.ones_like(x0),
        )

    def posterior(self, x_t, x0, s, t):
        """q(x_s | x_t, x0) for s < t as a `tfd.Normal`."""
        tfd = _tfd()
        x_t = ops.cast(x_t, "float32")
        x0 = ops.cast(x0, "float32")
        coef_x_t, coef_x0, variance = self.posterior_coefficients(s, t)
        loc = broadcast_like(coef_x_t, x_t) * x_t + broadcast_like(coef_x0, x0) * x0
        scale = ops.sqrt(broadcast_like(variance, x_t)) * ops.ones_like(x_t)
        return tfd.Normal(loc=loc, scale=scale)

    def prior(self, shape=()):
        """p(x_1) = N(0, prior_std^2) as a `tfd.Normal` of the given shape."""
        tfd = _tfd()
        return tfd.Normal(
            loc=ops.zeros(shape, "float32"),
            scale=self.prior_std * ops.ones(shape, "float32"),
        )

    # --- serialization -------------------------------------------------------
    def get_config(self):
        return {"t_min": self.t_min}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _tfd():
    import tensorflow_probability as tfp

    return tfp.distributions


def register(cls):
    """Registers a schedule or sampler class for `.keras` serialization."""
    return keras.saving.register_keras_serializable(package="keras_diffusion")(cls)
