"""Masking schedules of absorbing-state (masked) discrete diffusion."""

import math

from keras import ops

from keras_diffusion.schedules.schedule import register

MASKING_KINDS = ("log_linear", "cosine")


@register
class MaskingSchedule:
    """How many tokens are masked at time t: `alpha(t)` = P(a token is kept).

    The library's time convention: t in [0, 1], t = 0 is the data
    (`alpha(0) = 1`) and t = 1 is fully masked (`alpha(1) = 0`). Each token
    is masked independently with probability `1 - alpha(t)`, so
    `q(z_t | x) = alpha(t) x + (1 - alpha(t)) m` (MDLM, eq. 4).

    - `"log_linear"`: `alpha(t) = 1 - t`. Its total noise
      `-log alpha(t) = -log(1 - t)` is MDLM's and SEDD's log-linear schedule
      (without their `eps`, so that t = 1 is exactly all mask).
    - `"cosine"`: `alpha(t) = cos(pi t / 2)`.

    `elbo_weight(t) = -alpha'(t) / (1 - alpha(t))` is the weight of the
    masked cross-entropy in the continuous-time negative ELBO (MDLM,
    eq. 10): 1/t for log-linear.

    Args:
        kind: `"log_linear"` or `"cosine"`.

    Example:
    >>> schedule = MaskingSchedule("log_linear")
    >>> schedule.alpha(keras.ops.array([0.0, 0.25, 1.0]))   # [1, 0.75, 0]

    References:
        Sahoo et al., Simple and Effective Masked Diffusion Language Models,
        2024 (MDLM).
        Shi et al., Simplified and Generalized Masked Diffusion for Discrete
        Data, 2024.
    """

    def __init__(self, kind="log_linear"):
        if kind not in MASKING_KINDS:
            raise ValueError(
                f"`kind` must be one of {list(MASKING_KINDS)}, received kind={kind!r}"
            )
        self.kind = kind

    def alpha(self, t):
        """P(a token is still unmasked at time t)."""
        t = ops.cast(t, "float32")
        if self.kind == "log_linear":
            return 1.0 - t
        return ops.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t):
        """d alpha / dt (negative)."""
        t = ops.cast(t, "float32")
        if self.kind == "log_linear":
            return -ops.ones_like(t)
        return -0.5 * math.pi * ops.sin(0.5 * math.pi * t)

    def mask_probability(self, t):
        """1 - alpha(t): P(a token is masked at time t), computed without
        cancellation near t = 0 (t, and 2 sin^2(pi t / 4))."""
        t = ops.cast(t, "float32")
        if self.kind == "log_linear":
            return t
        return 2.0 * ops.square(ops.sin(0.25 * math.pi * t))

    def elbo_weight(self, t):
        """-alpha'(t) / (1 - alpha(t)), the NELBO weight of the masked CE."""
        t = ops.cast(t, "float32")
        if self.kind == "log_linear":
            return 1.0 / t
        # (pi/2) sin(u) / (1 - cos(u)) = (pi/2) / tan(u/2), u = pi t / 2:
        # stable near t = 0.
        return 0.5 * math.pi / ops.tan(0.25 * math.pi * t)

    def get_config(self):
        return {"kind": self.kind}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"MaskingSchedule(kind={self.kind!r})"
