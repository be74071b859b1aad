"""The sampler contract and what every sampler shares."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.random import step_noise  # noqa: F401 (re-exported)
from keras_diffusion.samplers.spacing import make_timesteps
from keras_diffusion.samplers.spacing import start_log_snr_for
from keras_diffusion.samplers.spacing import start_std
from keras_diffusion.samplers.spacing import validate_timesteps
from keras_diffusion.schedules.schedule import broadcast_like


# Above this, a corrector step amplifies its second model evaluation's error
# so much that the samples are far off (benchmarks/results/sampler_mnist.md).
CORRECTION_GAIN_LIMIT = 10.0


class Sampler:
    """Base class of samplers: stateless objects whose `sample` runs a loop.

    The constructor takes only options; everything else is an argument of
    `sample`. A subclass implements `_loop(denoise, x, times, seed)`: `times`
    holds the N evaluation times followed by 0, `denoise(x, t)` returns the
    model's (x0, eps) at the scalar time t, and the loop is one
    `ops.fori_loop` over the N steps.

    Every sampler takes its last step, to t = 0, as a deterministic DDIM
    step x = alpha(0) x0 + sigma(0) eps: for a schedule with sigma(0) = 0 that
    returns the denoised x0, as k-diffusion's samplers and diffusers'
    "lower order final" steps do.

    Args:
        clip_x0: if set, clip predicted x0 to [-clip_x0, clip_x0] (then eps
            is recomputed from the clipped x0).
        dynamic_threshold: if set, a percentile p in (0, 1): Imagen's dynamic
            thresholding, clipping x0 to [-s, s] with s the p-quantile of
            |x0| per example (at least 1) and dividing by s.
    """

    default_num_steps = 50

    def __init__(self, clip_x0=None, dynamic_threshold=None):
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"`clip_x0` must be positive, received clip_x0={clip_x0}")
        if dynamic_threshold is not None and not 0 < dynamic_threshold < 1:
            raise ValueError(
                "`dynamic_threshold` must be in (0, 1), received "
                f"dynamic_threshold={dynamic_threshold}"
            )
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold

    def get_config(self):
        return {"clip_x0": self.clip_x0, "dynamic_threshold": self.dynamic_threshold}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # --- the public entry point ---------------------------------------------
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
        """Integrates from noise at the first timestep down to data at t = 0.

        Without `timesteps` the grid starts at t = 1, or on schedules whose
        log-SNR(1) is below `spacing.START_LOG_SNR` (cosine: -19.8, rectified
        flow: -inf) where the log-SNR reaches it: see `spacing.start_time`.
        For "epsilon" and "score" that floor is `spacing.NOISE_START_LOG_SNR`
        (-5: t = 0.70 on linear, 0.97 on scaled_linear, 0.95 on cosine,
        0.92 on rectified flow, 0.83 on VE).

        Args:
            model_fn: `model_fn(x_t, t) -> prediction`, `t` of shape [batch].
            noise: standard normal noise of the output's shape; the sampler
                starts from `spacing.start_std(schedule, t_start) * noise`:
                `schedule.prior_std`, or sigma(t_start) on a variance-
                exploding schedule whose grid starts below t = 1.
            schedule: a `Schedule` or a schedule name.
            prediction: what `model_fn` predicts: "epsilon", "x0", "v", "flow",
                "score".
            num_steps: number of model-evaluation times (default
                `default_num_steps`); ignored when `timesteps` is given.
            timesteps: explicit decreasing times in (0, 1] at which the model
                is evaluated; after the last one the sampler steps to 0.
            spacing: the grid when `timesteps` is None: "uniform" (default),
                "leading", "trailing", "linspace", "log_snr", "karras".
            seed: an int (or scalar int tensor) for stochastic samplers.

        Returns:
            The samples, shaped like `noise`, float32.
        """
        noise, schedule = self._check_inputs(noise, schedule, prediction)
        times = self.timesteps(schedule, num_steps, timesteps, spacing, prediction)
        try:
            concrete = np.asarray(ops.convert_to_numpy(times), "float64")
        except (RuntimeError, TypeError):  # Traced (tf.function, jax.jit).
            concrete = None
        if concrete is not None:
            self.check_timesteps(schedule, concrete)
        times = ops.concatenate([times, ops.zeros((1,), "float32")])
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        denoise = self._make_denoise(model_fn, schedule, prediction)
        x = start_std(schedule, times[0]) * noise
        x = self._loop(denoise, x, times, schedule, seed)
        return _check_finite(x)

    def timesteps(self, schedule, num_steps=None, timesteps=None, spacing=None,
                  prediction=None):
        """The model-evaluation times this sampler would use (without the 0).

        `prediction` sets where a default grid starts
        (`spacing.start_log_snr_for`): noise predictions start at a higher
        log-SNR.
        """
        schedule = schedules_lib.get(schedule)
        if timesteps is not None:
            return validate_timesteps(timesteps)
        if num_steps is None:
            num_steps = self.default_num_steps
        spacing = spacing or getattr(schedule, "default_spacing", "uniform")
        return make_timesteps(schedule, num_steps, spacing,
                              start_log_snr=start_log_snr_for(prediction))

    def correction_gains(self, schedule, times):
        """How much each corrector step amplifies an error (None: no corrector).

        Args:
            schedule: a `Schedule`.
            times: numpy float64, the evaluation times followed by 0.

        Returns:
            None, or one gain per step from `times[k]` to `times[k + 1]`
            that is corrected: the factor by which the step's result moves
            per unit of error in the x0 of its second model evaluation,
            relative to the exact (DDIM) step's own factor alpha(s).
        """
        return None

    def check_timesteps(self, schedule, times):
        """Warns when this grid makes the sampler's corrector unstable.

        Heun's and EDM's corrector evaluates the model at the end of a step
        at the Euler predictor, off the data; on a coarse grid whose steps
        end near t = 0 (Heun) or start at a large sigma / alpha (EDM) that
        evaluation's error is amplified (`correction_gains`). Above
        `CORRECTION_GAIN_LIMIT` this warns, naming the step.

        Args:
            schedule: a `Schedule` or a schedule name.
            times: the evaluation times (`timesteps()`, without the final 0).
        """
        schedule = schedules_lib.get(schedule)
        times = np.append(np.asarray(times, "float64"), 0.0)
        gains = self.correction_gains(schedule, times)
        if gains is None:
            return
        gains = np.where(np.isfinite(gains), gains, 0.0)
        if not len(gains) or gains.max() <= CORRECTION_GAIN_LIMIT:
            return
        k = int(np.argmax(gains))
        warnings.warn(
            f"{type(self).__name__} with {len(times) - 1} timesteps: the corrector of the "
            f"step from t={times[k]:.4g} to t={times[k + 1]:.4g} amplifies the error of "
            f"its second model evaluation {gains[k]:.0f}x (above {CORRECTION_GAIN_LIMIT:g}), "
            "so the samples can be far off. Use more timesteps, another `spacing`, or a "
            "multistep solver (DPMSolverSampler) at this budget.",
            stacklevel=3,
        )

    # --- shared pieces -----------------------------------------------------
    @staticmethod
    def _check_inputs(noise, schedule, prediction):
        """Validates `sample`'s arguments: returns (float32 noise, schedule)."""
        schedule = schedules_lib.get(schedule)
        objectives.validate_prediction(prediction)
        noise = ops.cast(ops.convert_to_tensor(noise), "float32")
        if len(noise.shape) < 2:
            raise ValueError(
                "`noise` must have shape [batch, ...] with at least 2 axes, "
                f"received shape {tuple(noise.shape)}"
            )
        return noise, schedule

    def _make_denoise(self, model_fn, schedule, prediction):
        def denoise(x, t):
            batch_t = ops.full((ops.shape(x)[0],), t)
            output = ops.cast(model_fn(x, batch_t), "float32")
            if tuple(output.shape) != tuple(x.shape) and None not in output.shape:
                raise ValueError(
                    f"`model_fn` must return the shape of x_t {tuple(x.shape)}, "
                    f"received shape {tuple(output.shape)}"
                )
            x0, eps = objectives.to_x0_epsilon(prediction, output, x, t, schedule)
            if self.clip_x0 is None and self.dynamic_threshold is None:
                return x0, eps
            x0 = self._threshold(x0)
            alpha, sigma = schedule.alpha_sigma(t)
            return x0, (x - alpha * x0) / sigma

        return denoise

    def _threshold(self, x0):
        if self.dynamic_threshold is not None:
            flat = ops.abs(ops.reshape(x0, (ops.shape(x0)[0], -1)))
            s = ops.quantile(flat, self.dynamic_threshold, axis=1)
            s = broadcast_like(ops.maximum(s, 1.0), x0)
            return ops.clip(x0, -s, s) / s
        return ops.clip(x0, -self.clip_x0, self.clip_x0)

    @staticmethod
    def ddim_step(x0, eps, s, schedule):
        """The deterministic DDIM step to time s: alpha_s x0 + sigma_s eps."""
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        return alpha_s * x0 + sigma_s * eps

    def _loop(self, denoise, x, times, schedule, seed):
        raise NotImplementedError


def _check_finite(x):
    """Raises if sampling produced NaN or Inf (in graphs: a runtime error)."""
    message = (
        "`model_fn` produced NaN or Inf during sampling: check the model, its "
        "`prediction` type and the schedule."
    )
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            if not bool(tf.reduce_all(tf.math.is_finite(x))):
                raise ValueError(message)
            return x
        return tf.debugging.assert_all_finite(x, message)
    try:
        finite = bool(ops.all(ops.isfinite(x)))
    except Exception:  # Traced under jax.jit: the check cannot run.
        return x
    if not finite:
        raise ValueError(message)
    return x
