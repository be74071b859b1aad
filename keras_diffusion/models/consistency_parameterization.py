"""The consistency-model parameterization of a denoiser (Song et al., 2023)."""

import keras
from keras import ops

from keras_diffusion import objectives
from keras_diffusion.models.denoiser_wrapper import DenoiserWrapper
from keras_diffusion.schedules.schedule import broadcast_like


def consistency_coefficients(schedule, t, sigma_data=0.5):
    """(c_skip / alpha, c_out) of f(x, t) = c_skip x / alpha + c_out F at `t`.

    With the rescaled noise level sigma~ = sigma(t) / alpha(t) (EDM's sigma;
    sigma~ = sigma on variance-exploding schedules) and its value
    sigma~_min at `schedule.t_min`, Song et al. (2023, appendix C) take

        c_skip = sigma_data^2 / ((sigma~ - sigma~_min)^2 + sigma_data^2),
        c_out = sigma_data (sigma~ - sigma~_min) / sqrt(sigma_data^2 + sigma~^2),

    so that c_skip = 1 and c_out = 0 at t_min: f(x, t_min) = x / alpha(t_min),
    the boundary condition. They are written with alpha and sigma multiplied
    through, so they stay finite where alpha = 0 (rectified flow at t = 1).

    Args:
        schedule: a `Schedule`.
        t: times `[batch]` (or a scalar).
        sigma_data: the data's standard deviation.

    Returns:
        `(c_skip_over_alpha, c_out)`, each shaped like `t`.
    """
    t = ops.cast(ops.convert_to_tensor(t), "float32")
    alpha, sigma = schedule.alpha_sigma(t)
    t_min = ops.convert_to_tensor(schedule.t_min, "float32")
    alpha_min, sigma_min = schedule.alpha_sigma(t_min)
    gap = sigma - (sigma_min / alpha_min) * alpha  # alpha (sigma~ - sigma~_min)
    norm = ops.square(gap) + sigma_data**2 * ops.square(alpha)
    c_skip_over_alpha = sigma_data**2 * alpha / norm
    c_out = sigma_data * gap / ops.sqrt(sigma_data**2 * ops.square(alpha) + ops.square(sigma))
    return c_skip_over_alpha, c_out


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ConsistencyParameterization(DenoiserWrapper):
    """Wraps a network F into a consistency function f (an x0 predictor).

        f(x_t, t) = c_skip(t) x_t / alpha(t) + c_out(t) F(x_t, t)

    with `consistency_coefficients`: f(x, t_min) = x / alpha(t_min) exactly
    (the boundary condition at the schedule's smallest time), on any
    schedule. The network sees the denoiser inputs unchanged (`x_t`, `t` in
    [0, 1], and the conditions), as every denoiser of the library does, so a
    trained diffusion denoiser can initialize it. It follows the denoiser
    contract and predicts "x0".

    With `network_prediction` set, the network is a diffusion denoiser of
    that prediction type and F = x0(network) / sigma_data, its output turned
    into x0 (`objectives.to_x0_epsilon`), as LCM does with an epsilon
    network: a student initialized from its teacher then starts at
    f ~= the teacher's x0 where c_out ~= sigma_data (high noise) and at
    f ~= x_t / alpha near t_min, instead of at an arbitrary function.

    Args:
        denoiser: the network F, any denoiser of the dict contract.
        schedule: the schedule (name, config or `Schedule`).
        sigma_data: the data's standard deviation (0.5 for images in [-1, 1]).
        network_prediction: None (F is the network's output) or the
            prediction type of the network ("epsilon", "x0", "v", "flow",
            "score"), converted to x0 / sigma_data.
        **kwargs: base model arguments (`name`, `dtype`, ...).

    Example:
    >>> net = keras_diffusion.models.MLPDenoiser(data_dim=2)
    >>> f = ConsistencyParameterization(net, schedule="cosine")
    >>> x0 = f({"x_t": x_t, "t": t})

    References:
        Song, Dhariwal, Chen & Sutskever, Consistency Models, 2023.
    """

    def __init__(self, denoiser, schedule="cosine", sigma_data=0.5, network_prediction=None,
                 **kwargs):
        if isinstance(denoiser, ConsistencyParameterization):
            raise ValueError(
                "`denoiser` is already a ConsistencyParameterization; pass its network "
                "(`.denoiser`)"
            )
        super().__init__(denoiser, schedule, sigma_data, **kwargs)
        if network_prediction is not None:
            network_prediction = objectives.validate_prediction(network_prediction)
        self.network_prediction = network_prediction

    def call(self, inputs, training=None):
        self._check_dict(inputs)
        x_t = ops.cast(inputs["x_t"], "float32")
        t = ops.cast(inputs["t"], "float32")
        if len(t.shape) == 0:
            t = ops.full((ops.shape(x_t)[0],), t)
        c_skip, c_out = consistency_coefficients(self.schedule, t, self.sigma_data)
        f = ops.cast(self.denoiser(inputs, training=training), "float32")
        if self.network_prediction is not None:
            x0, _ = objectives.to_x0_epsilon(self.network_prediction, f, x_t, t, self.schedule)
            f = x0 / self.sigma_data
        return broadcast_like(c_skip, x_t) * x_t + broadcast_like(c_out, x_t) * f

    def get_config(self):
        config = super().get_config()
        if self.network_prediction is not None:
            config["network_prediction"] = self.network_prediction
        return config
