"""Discrete-time VP schedules given by T betas, as in DDPM."""

import numpy as np
from keras import ops

from keras_diffusion.schedules.schedule import _float
from keras_diffusion.schedules.vp_schedule import VPSchedule


class DiscreteSchedule(VPSchedule):
    """A variance-preserving schedule defined by T betas (DDPM).

    `alphas_cumprod` is computed exactly as DDPM does, in float64:
    `cumprod(1 - betas)`. Step k (0-based, as in DDPM and diffusers) sits at
    time t = (k + 1) / T; between grid points the log-SNR is interpolated
    linearly. On [0, 1/T] alpha_bar goes linearly from 1 (t = 0, the data) to
    alpha_bar_0, so sigma(0) = 0 and a sampler's last step lands on data.
    Times within 1e-4 steps of a grid point snap to it, so that grid times
    computed in float32 give the table's values exactly.

    A subclass defines `betas()` (a float64 numpy array of length T).

    Args:
        num_train_timesteps: T, the number of training steps.
    """

    def __init__(self, num_train_timesteps=1000, **kwargs):
        num_train_timesteps = int(num_train_timesteps)
        if num_train_timesteps < 2:
            raise ValueError(
                "`num_train_timesteps` must be at least 2, received "
                f"num_train_timesteps={num_train_timesteps}"
            )
        self.num_train_timesteps = num_train_timesteps
        super().__init__(t_min=1.0 / num_train_timesteps, **kwargs)
        betas = np.asarray(self.betas(), dtype=np.float64)
        if betas.shape != (num_train_timesteps,) or not (
            np.all(betas > 0) and np.all(betas < 1)
        ):
            raise ValueError(
                f"{type(self).__name__}.betas() must return {num_train_timesteps} "
                f"values in (0, 1), received shape {betas.shape}"
            )
        self.betas_np = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        log_snr = np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod)
        if np.any(np.diff(log_snr) >= 0):
            raise ValueError("The betas must give a strictly decreasing log-SNR.")
        self._log_snr_table = log_snr.astype("float32")

    def betas(self):
        raise NotImplementedError

    def get_config(self):
        return {"num_train_timesteps": self.num_train_timesteps}

    def _position(self, t):
        """Continuous grid position p = t * T - 1 (k for t = (k + 1) / T)."""
        p = _float(t) * self.num_train_timesteps - 1.0
        snapped = ops.round(p)
        return ops.where(ops.abs(p - snapped) < 1e-4, snapped, p)

    def _segment(self, p):
        num = self.num_train_timesteps
        index = ops.clip(ops.floor(p), 0.0, num - 2.0)
        table = ops.convert_to_tensor(self._log_snr_table)
        i = ops.cast(index, "int32")
        lo = ops.take(table, i)
        hi = ops.take(table, i + 1)
        return index, lo, hi

    def log_snr(self, t):
        p = self._position(t)
        index, lo, hi = self._segment(p)
        interpolated = lo + (p - index) * (hi - lo)
        # First segment, t in [0, 1/T]: 1 - alpha_bar = t * T * beta_0.
        u = ops.clip(p + 1.0, 0.0, 1.0) * float(self.betas_np[0])
        first = ops.log1p(-u) - ops.log(u)
        return ops.where(p < 0.0, first, interpolated)

    def d_log_snr(self, t):
        num = float(self.num_train_timesteps)
        p = self._position(t)
        _, lo, hi = self._segment(p)
        beta0 = float(self.betas_np[0])
        u = ops.clip(p + 1.0, 0.0, 1.0) * beta0
        first = -num * beta0 / (1.0 - u) - num * beta0 / u
        return ops.where(p < 0.0, first, (hi - lo) * num)

    def t_from_log_snr(self, log_snr):
        num = self.num_train_timesteps
        log_snr = _float(log_snr)
        table = ops.convert_to_tensor(self._log_snr_table)
        # First index j with table[j] <= log_snr; the segment is (j - 1, j).
        j = ops.searchsorted(-table, ops.reshape(-log_snr, (-1,)), side="left")
        j = ops.reshape(j, ops.shape(log_snr))
        i = ops.clip(ops.cast(j, "int32") - 1, 0, num - 2)
        lo = ops.take(table, i)
        hi = ops.take(table, i + 1)
        p = ops.cast(i, "float32") + (log_snr - lo) / (hi - lo)
        t = ops.clip((p + 1.0) / num, 1.0 / num, 1.0)
        # Above the first grid point: 1 - alpha_bar = sigmoid(-log_snr).
        first = ops.sigmoid(-log_snr) / (num * float(self.betas_np[0]))
        return ops.where(log_snr >= table[0], first, t)
