"""Variance-preserving schedules defined by their log-SNR."""

from keras import ops

from keras_diffusion.schedules.schedule import Schedule


class VPSchedule(Schedule):
    """Base class of variance-preserving schedules (alpha^2 + sigma^2 = 1).

    A subclass defines `log_snr(t)`, its derivative `d_log_snr(t)` and the
    inverse `t_from_log_snr`; alpha and sigma follow as
    alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr), which is accurate
    at both ends of the schedule.
    """

    def alpha_sigma(self, t):
        log_snr = self.log_snr(t)
        return ops.sqrt(ops.sigmoid(log_snr)), ops.sqrt(ops.sigmoid(-log_snr))

    def alpha_sigma_derivatives(self, t):
        # alpha^2 = sigmoid(l): d alpha = 0.5 alpha sigma^2 dl,
        # d sigma = -0.5 sigma alpha^2 dl.
        alpha, sigma = self.alpha_sigma(t)
        d_log_snr = self.d_log_snr(t)
        return (
            0.5 * alpha * ops.square(sigma) * d_log_snr,
            -0.5 * sigma * ops.square(alpha) * d_log_snr,
        )
