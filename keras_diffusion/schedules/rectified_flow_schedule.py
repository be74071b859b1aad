"""The rectified-flow (linear interpolation) schedule."""

from keras import ops

from keras_diffusion.schedules.schedule import Schedule
from keras_diffusion.schedules.schedule import _float
from keras_diffusion.schedules.schedule import register


@register
class RectifiedFlowSchedule(Schedule):
    """Rectified flow: x_t = (1 - t') x0 + t' eps, with t' = shift(t).

    With `shift` = 1 (the default) t' = t. A `shift` > 1 spends more time at
    high noise, as Stable Diffusion 3 does for high resolutions:
    t' = shift * t / (1 + (shift - 1) * t). The "flow" prediction is then
    d x_t / dt, which is (eps - x0) when shift = 1.

    Args:
        shift: the resolution-dependent time shift of SD3 (3.0 there).
        t_min: smallest time used for training and sampling grids.

    Example:
    >>> schedule = keras_diffusion.schedules.RectifiedFlowSchedule(shift=3.0)
    >>> schedule.alpha_sigma(keras.ops.array([0.5]))

    References:
        Liu et al., Flow Straight and Fast, 2022. Lipman et al., Flow Matching
        for Generative Modeling, 2023. Esser et al., Scaling Rectified Flow
        Transformers for High-Resolution Image Synthesis, 2024 (the shift).
    """

    def __init__(self, shift=1.0, t_min=1e-3, **kwargs):
        shift = float(shift)
        if shift <= 0:
            raise ValueError(f"`shift` must be positive, received shift={shift}")
        self.shift = shift
        super().__init__(t_min=t_min, **kwargs)

    def _shifted(self, t):
        t = _float(t)
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def alpha_sigma(self, t):
        u = self._shifted(t)
        return 1.0 - u, u

    def alpha_sigma_derivatives(self, t):
        t = _float(t)
        du = self.shift / ops.square(1.0 + (self.shift - 1.0) * t)
        return -du, du

    def log_snr(self, t):
        u = self._shifted(t)
        return 2.0 * (ops.log1p(-u) - ops.log(u))

    def t_from_log_snr(self, log_snr):
        u = ops.sigmoid(-0.5 * _float(log_snr))
        return u / (self.shift - (self.shift - 1.0) * u)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}
