"""EDM's preconditioning of a denoiser (Karras et al., 2022)."""

import keras
from keras import ops

from keras_diffusion import schedules as schedules_lib
from keras_diffusion.models.denoiser_wrapper import DenoiserWrapper
from keras_diffusion.schedules.schedule import broadcast_like


def edm_coefficients(sigma, sigma_data):
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level `sigma` (Table 1).

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4.
    """
    sigma = ops.cast(sigma, "float32")
    norm = ops.square(sigma) + sigma_data**2
    c_skip = sigma_data**2 / norm
    c_out = sigma * sigma_data / ops.sqrt(norm)
    c_in = 1.0 / ops.sqrt(norm)
    c_noise = 0.25 * ops.log(sigma)
    return c_skip, c_out, c_in, c_noise


@keras.saving.register_keras_serializable(package="keras_diffusion")
class EDMPreconditioning(DenoiserWrapper):
    """Wraps a denoiser F into EDM's preconditioned x0 predictor D.

        D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    (Karras et al., 2022, eq. 7 and Table 1). It follows the denoiser
    contract: called with `{"x_t", "t", ...}` it returns the x0 prediction,
    so `DiffusionModel(EDMPreconditioning(net), prediction="x0",
    schedule="edm", weighting="edm", time_distribution="edm")` trains EDM
    with the library's own loss (with the "edm" weighting the loss is
    EDM's ||F - F_target||^2). On a schedule with alpha != 1 it
    preconditions x / alpha with sigma = sigma(t) / alpha(t), EDM's
    treatment of VP schedules. The wrapped network receives
    `"x_t": c_in x / alpha` and `"t": c_noise`; other inputs ("labels",
    "context", ...) pass through unchanged.

    Args:
        denoiser: the network F, any denoiser of the dict contract.
        schedule: the schedule (name, config or `Schedule`), "edm" by default.
        sigma_data: the data's standard deviation; `None` takes
            `schedule.sigma_data` (0.5 where the schedule has none).
        **kwargs: base model arguments (`name`, `dtype`, ...).

    Example:
    >>> net = keras_diffusion.models.MLPDenoiser(data_dim=2)
    >>> model = keras_diffusion.DiffusionModel(
    ...     EDMPreconditioning(net), schedule="edm", prediction="x0",
    ...     weighting="edm", time_distribution="edm")

    References:
        Karras, Aittala, Aila & Laine, Elucidating the Design Space of
        Diffusion-Based Generative Models, 2022.
    """

    def __init__(self, denoiser, schedule="edm", sigma_data=None, **kwargs):
        schedule = schedules_lib.get(schedule)
        if sigma_data is None:
            sigma_data = getattr(schedule, "sigma_data", 0.5)
        super().__init__(denoiser, schedule, sigma_data, **kwargs)

    def call(self, inputs, training=None):
        self._check_dict(inputs)
        x_t = ops.cast(inputs["x_t"], "float32")
        t = ops.reshape(ops.cast(inputs["t"], "float32"), (-1,))
        alpha, sigma = self.schedule.alpha_sigma(t)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma / alpha, self.sigma_data)
        x = x_t / broadcast_like(alpha, x_t)
        f = self.denoiser(
            {**inputs, "x_t": broadcast_like(c_in, x) * x, "t": c_noise},
            training=training,
        )
        f = ops.cast(f, "float32")
        return broadcast_like(c_skip, x) * x + broadcast_like(c_out, x) * f
