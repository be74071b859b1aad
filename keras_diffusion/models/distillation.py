"""What the few-step distillations share: the teacher and its ODE step.

A teacher is a trained `DiffusionModel` or any model function. `Teacher`
wraps either into one interface: `denoise(x_t, t, condition)` returns the
teacher's (x0, eps) at per-example times `t` of shape `[batch]`, with
classifier-free guidance folded in when a guidance scale is given (as LCM
does). `ode_step` takes one probability-flow ODE step with the samplers'
own step math (`Sampler.ddim_step`, `euler_sampler.flow`).
"""

import numbers

import keras
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.guidance import classifier_free_guidance
from keras_diffusion.samplers.euler_sampler import flow
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.schedules.schedule import broadcast_like

SOLVERS = ("ddim", "heun", "dpm_solver")


def same_schedule(a, b):
    """Whether two schedules are the same (class and configuration)."""
    return type(a) is type(b) and a.get_config() == b.get_config()


class Teacher:
    """A teacher for distillation: a `DiffusionModel` or a model function.

    Not a Keras layer on purpose: the student never tracks (trains or saves)
    the teacher's weights. A `DiffusionModel` teacher is read with its EMA
    weights when its optimizer keeps them (as `generate` does), snapshotted
    by `refresh()` (the students call it when `fit` starts).

    Args:
        teacher: a `DiffusionModel`, or a function `model_fn(x_t, t)` (for
            unconditional students) or `model_fn(x_t, t, condition)` where
            `condition` is the dict of denoiser condition inputs.
        prediction: the prediction type of a function teacher (a
            `DiffusionModel` has its own); required for functions.
        schedule: the schedule of a function teacher (the student's when
            None).
        student_schedule: the student's schedule: the teacher's must equal
            it.
        takes_condition: whether a function teacher takes the condition
            dict (default: when the student is conditional).
    """

    def __init__(self, teacher, prediction=None, schedule=None, student_schedule=None,
                 takes_condition=False):
        from keras_diffusion.models.diffusion_model import DiffusionModel

        if isinstance(teacher, Teacher):
            teacher = teacher.source
        self.source = teacher
        self.is_model = isinstance(teacher, DiffusionModel)
        if self.is_model:
            if prediction is not None and prediction != teacher.prediction:
                raise ValueError(
                    f"`teacher_prediction`={prediction!r} does not match the teacher "
                    f"model's prediction={teacher.prediction!r}; leave it None"
                )
            self.prediction = teacher.prediction
            self.schedule = teacher.schedule
        elif callable(teacher):
            if prediction is None:
                raise ValueError(
                    "A function teacher needs `teacher_prediction` (what it predicts: "
                    f"one of {list(objectives.PREDICTIONS)}), received "
                    "teacher_prediction=None"
                )
            self.prediction = objectives.validate_prediction(prediction)
            self.schedule = student_schedule if schedule is None else schedules_lib.get(
                schedule
            )
        else:
            raise ValueError(
                "`teacher` must be a DiffusionModel or a function model_fn(x_t, t), "
                f"received teacher of type {type(teacher).__name__}"
            )
        if student_schedule is not None and not same_schedule(self.schedule, student_schedule):
            raise ValueError(
                f"The teacher's schedule {self.schedule!r} does not match the student's "
                f"schedule {student_schedule!r}: distillation needs the same schedule"
            )
        self.takes_condition = bool(takes_condition)
        self._values = None

    def check_student(self, image_shape, num_classes, context_shape=None):
        """Raises unless a model teacher works on the student's data and conditions."""
        if not self.is_model:
            return
        teacher = self.source
        if teacher.image_shape is not None and tuple(teacher.image_shape) != tuple(image_shape):
            raise ValueError(
                f"The teacher works on data of shape {tuple(teacher.image_shape)}, the "
                f"student on image_shape={tuple(image_shape)}"
            )
        if teacher.num_classes != num_classes:
            raise ValueError(
                f"The teacher has num_classes={teacher.num_classes}, the student "
                f"num_classes={num_classes}: they must take the same labels"
            )
        if context_shape is not None and teacher.context_shape is not None and tuple(
            teacher.context_shape
        ) != tuple(context_shape):
            raise ValueError(
                f"The teacher's context_shape={tuple(teacher.context_shape)} does not "
                f"match the student's context_shape={tuple(context_shape)}"
            )

    def refresh(self):
        """Snapshots a model teacher's weights (EMA when kept)."""
        if self.is_model:
            teacher = self.source
            teacher._ensure_built()
            self._values = teacher.weight_values() if teacher._ema_by_variable() else None

    def _network(self, x_t, t, condition):
        if self.is_model:
            return self.source.runner.network(x_t, t, condition)
        if self.takes_condition:
            return self.source(x_t, t, condition)
        return self.source(x_t, t)

    def predict(self, x_t, t, condition=None, null_condition=None, guidance_scale=1.0):
        """The teacher's output (its prediction type) at per-example times;
        `guidance_scale` a float, or a tensor broadcastable to the output
        (per-example scales `(B, 1, ..., 1)`)."""
        condition = dict(condition or {})

        def body():
            plain = isinstance(guidance_scale, numbers.Number) and guidance_scale == 1.0
            if plain or not condition or null_condition is None:
                return self._network(x_t, t, condition)
            guided = classifier_free_guidance(
                self._network, condition, null_condition, guidance_scale
            )
            return guided(x_t, t)

        if self.is_model and self._values is not None:
            out = self.source.runner.call(self._values, body)
        else:
            out = body()
        out = ops.cast(out, "float32")
        if None not in out.shape and None not in x_t.shape and tuple(out.shape) != tuple(
            x_t.shape
        ):
            raise ValueError(
                f"The teacher returned shape {tuple(out.shape)} for x_t of shape "
                f"{tuple(x_t.shape)}: its data shape does not fit the student's"
            )
        return out

    def denoise(self, x_t, t, condition=None, null_condition=None, guidance_scale=1.0):
        """The teacher's (x0, eps) at per-example times `t` `[batch]`."""
        out = self.predict(x_t, t, condition, null_condition, guidance_scale)
        return objectives.to_x0_epsilon(self.prediction, out, x_t, t, self.schedule)


def ode_step(solver, denoise, x, t, s, schedule):
    """One probability-flow ODE step of `x` from times `t` to `s` (per example).

    Args:
        solver: "ddim" (first order), "heun" (Heun's trapezoid in t, as
            `HeunSampler`, two evaluations) or "dpm_solver" (DPM-Solver-2,
            the midpoint in log-SNR, two evaluations: its update from t to s
            is the DDIM step with the x0 of the midpoint).
        denoise: `denoise(x, t) -> (x0, eps)`, `t` of shape `[batch]`.
        x: the state at `t`.
        t, s: times `[batch]`, s < t.
        schedule: the schedule.

    Returns:
        The state at `s`.
    """
    if solver not in SOLVERS:
        raise ValueError(f"Unknown `solver`: {solver!r}. Valid names: {list(SOLVERS)}")
    s_b = broadcast_like(s, x)
    x0, eps = denoise(x, t)
    if solver == "ddim":
        return Sampler.ddim_step(x0, eps, s_b, schedule)
    if solver == "heun":
        dt = s_b - broadcast_like(t, x)
        v = flow(x0, eps, t, schedule)
        x_pred = x + dt * v
        x0_s, eps_s = denoise(x_pred, s)
        return x + 0.5 * dt * (v + flow(x0_s, eps_s, s, schedule))
    # DPM-Solver-2 (Lu et al. 2022b, singlestep midpoint, r = 1/2).
    u = schedule.t_from_log_snr(0.5 * (schedule.log_snr(t) + schedule.log_snr(s)))
    x_u = Sampler.ddim_step(x0, eps, broadcast_like(u, x), schedule)
    x0_u, _ = denoise(x_u, u)
    alpha_t, sigma_t = schedule.alpha_sigma(broadcast_like(t, x))
    return Sampler.ddim_step(x0_u, (x - alpha_t * x0_u) / sigma_t, s_b, schedule)


def pseudo_huber(a, b, c):
    """sqrt(||a - b||^2 + c^2) - c per example (Song & Dhariwal, 2023, eq. 9)."""
    diff = ops.reshape(a - b, (ops.shape(a)[0], -1))
    return ops.sqrt(ops.sum(ops.square(diff), axis=1) + c**2) - c


def mean_squared(a, b):
    diff = ops.reshape(a - b, (ops.shape(a)[0], -1))
    return ops.mean(ops.square(diff), axis=1)


def build_copy(copy, teacher, **extra_inputs):
    """Builds `copy`, a denoiser shaped like the teacher's, by calling it
    once on zeros of the teacher's shapes (with `extra_inputs`)."""
    copy({
        "x_t": ops.zeros((1,) + tuple(teacher.image_shape), "float32"),
        "t": ops.full((1,), 0.5, "float32"),
        **extra_inputs,
        **teacher._null_condition(1),
    })
    return copy


def copy_denoiser(teacher):
    """A copy of the teacher's denoiser holding its (EMA) weights."""
    teacher._ensure_built()
    network = teacher.denoiser
    copy = build_copy(
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(network)),
        teacher,
    )
    values = teacher.weight_values()[: len(network.variables)]
    if len(copy.variables) != len(values):
        raise ValueError(
            f"Could not copy the teacher's denoiser {type(network).__name__}: its copy has "
            f"{len(copy.variables)} weights, the teacher {len(values)}"
        )
    for variable, value in zip(copy.variables, values):
        variable.assign(value)
    return copy
