"""Adaptive Dormand-Prince on the probability-flow ODE (TensorFlow only)."""

from keras import ops

from keras_diffusion import schedules as schedules_lib
from keras_diffusion.samplers.euler_sampler import flow
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import _check_finite
from keras_diffusion.samplers.spacing import start_log_snr_for
from keras_diffusion.samplers.spacing import start_std
from keras_diffusion.samplers.spacing import start_time
from keras_diffusion.samplers.spacing import validate_timesteps
from keras_diffusion.schedules.schedule import register

METHODS = ("dormand_prince",)
_NAN_MESSAGE = (
    "`model_fn` produced NaN or Inf during sampling: check the model, its "
    "`prediction` type and the schedule."
)


@register
class ODESampler(Sampler):
    """Solves the probability-flow ODE with an adaptive Runge-Kutta method.

    dx/dt = alpha'(t) x0(x, t) + sigma'(t) eps(x, t) is integrated with
    `tfp.math.ode.DormandPrince` (5th order with a 4th-order error estimate)
    from `timesteps[0]` to `timesteps[-1]`, then the DDIM step
    x = alpha(0) x0 + sigma(0) eps goes to t = 0. Without `timesteps` the
    integration runs from the other samplers' start time (t = 1, or where the
    log-SNR reaches `spacing.START_LOG_SNR` on cosine and rectified flow, see
    `spacing.start_time`) to `schedule.t_min`. The solver runs forward
    in u = -log(t) (tfp wants increasing times, and its Runge-Kutta stages
    look past the final time: in u they stay inside (0, t_end), where every
    schedule is defined, and the steps shrink where t is small).
    `num_steps` and `spacing` are ignored: the solver picks its own steps.

    `solve` also returns the number of model evaluations; `sample` only the
    samples. TensorFlow backend only (it uses TensorFlow Probability).

    Args:
        rtol: relative tolerance of the local error.
        atol: absolute tolerance of the local error.
        method: "dormand_prince".
        max_num_steps: optional cap on the solver's steps.
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.ODESampler(rtol=1e-5, atol=1e-5)
    >>> x0, info = sampler.solve(model_fn, noise, schedule="cosine",
    ...                          prediction="epsilon")
    >>> info["nfe"]

    References:
        Song et al., Score-Based Generative Modeling through Stochastic
        Differential Equations, 2021. Dormand & Prince, A family of embedded
        Runge-Kutta formulae, 1980.
    """

    def __init__(
        self, rtol=1e-5, atol=1e-5, method="dormand_prince", max_num_steps=None, **kwargs
    ):
        super().__init__(**kwargs)
        rtol, atol = float(rtol), float(atol)
        if not rtol > 0:
            raise ValueError(f"`rtol` must be positive, received rtol={rtol}")
        if not atol > 0:
            raise ValueError(f"`atol` must be positive, received atol={atol}")
        if method not in METHODS:
            raise ValueError(f"Unknown `method`: {method!r}. Valid names: {list(METHODS)}")
        if max_num_steps is not None and int(max_num_steps) < 1:
            raise ValueError(
                f"`max_num_steps` must be at least 1, received max_num_steps={max_num_steps}"
            )
        self.rtol = rtol
        self.atol = atol
        self.method = method
        self.max_num_steps = None if max_num_steps is None else int(max_num_steps)

    def get_config(self):
        return {
            **super().get_config(),
            "rtol": self.rtol,
            "atol": self.atol,
            "method": self.method,
            "max_num_steps": self.max_num_steps,
        }

    def timesteps(self, schedule, num_steps=None, timesteps=None, spacing=None,
                  prediction=None):
        """[t_start, t_min] by default: the span of the integration (without the 0).

        t_start is where the other samplers' default grids start,
        `keras_diffusion.samplers.spacing.start_time(schedule,
        start_log_snr_for(prediction))`: t = 1 except on schedules whose
        log-SNR(1) is about -inf (cosine, rectified flow), and for noise
        predictions except where log-SNR(1) >= -5.
        """
        schedule = schedules_lib.get(schedule)
        if timesteps is not None:
            return validate_timesteps(timesteps)
        t_min = schedule.t_min if schedule.t_min > 0 else 1e-3
        t_start = ops.cast(start_time(schedule, start_log_snr_for(prediction)), "float32")
        return ops.stack([t_start, ops.convert_to_tensor(t_min, "float32")])

    def sample(
        self,
        model_fn,
        noise,
        *,
        schedule,
        prediction,
        num_steps=None,
        timesteps=None,
        spacing=None,
        seed=None,
    ):
        """Like `Sampler.sample`; returns only the samples (see `solve`)."""
        return self.solve(
            model_fn, noise, schedule=schedule, prediction=prediction, timesteps=timesteps
        )[0]

    def solve(self, model_fn, noise, *, schedule, prediction, timesteps=None):
        """Integrates from `timesteps[0]` (default 1) to `timesteps[-1]`, then to 0.

        Returns:
            `(x0, info)`: the samples and a dict with "nfe", the number of
            model evaluations (the solver's plus one for the final step), and
            "status" (0 on success).
        """
        import tensorflow as tf

        import keras

        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "ODESampler needs the TensorFlow backend (tfp.math.ode), "
                f"received backend {keras.backend.backend()!r}"
            )
        noise, schedule = self._check_inputs(noise, schedule, prediction)
        times = self.timesteps(schedule, timesteps=timesteps, prediction=prediction)
        denoise = self._make_denoise(model_fn, schedule, prediction)

        def run(noise, times):
            return self._integrate(denoise, start_std(schedule, times[0]) * noise, times,
                                   schedule)

        if not tf.executing_eagerly():
            x, nfe, status = run(noise, times)
            return _check_finite(x), {"nfe": nfe, "status": status}
        # The solver's while loop is slow eagerly: run it as a graph, and turn
        # its runtime errors into ValueErrors that say what went wrong.
        try:
            x, nfe, status = tf.function(run, autograph=False)(noise, times)
        except tf.errors.InvalidArgumentError as error:
            if _NAN_MESSAGE in str(error):
                raise ValueError(_NAN_MESSAGE) from None
            if "max_num_steps" in str(error):
                raise ValueError(
                    "ODESampler needed more than `max_num_steps` solver steps, "
                    f"received max_num_steps={self.max_num_steps}"
                ) from None
            raise
        return _check_finite(x), {"nfe": nfe, "status": status}

    def _integrate(self, denoise, x, times, schedule):
        import tensorflow as tf
        import tensorflow_probability as tfp

        solver = tfp.math.ode.DormandPrince(
            rtol=self.rtol, atol=self.atol, max_num_steps=self.max_num_steps
        )

        def ode_fn(u, y):  # u = -log t, dx/du = -t dx/dt.
            t = ops.exp(-u)
            x0, eps = denoise(y, t)
            # NaN would otherwise shrink the step size forever.
            return tf.debugging.assert_all_finite(
                -t * flow(x0, eps, t, schedule), _NAN_MESSAGE
            )

        t_start, t_end = times[0], times[-1]
        results = solver.solve(
            ode_fn, -ops.log(t_start), x, solution_times=ops.reshape(-ops.log(t_end), (1,))
        )
        x = results.states[-1]
        x0, eps = denoise(x, t_end)
        x = self.ddim_step(x0, eps, ops.zeros_like(t_end), schedule)
        nfe = results.diagnostics.num_ode_fn_evaluations + 1
        return x, nfe, results.diagnostics.status
