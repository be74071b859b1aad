"""Progressive distillation (Salimans & Ho, 2022): halve the DDIM steps per round."""

import keras
from keras import ops

from keras_diffusion import objectives
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.distillation import Teacher
from keras_diffusion.models.distillation import copy_denoiser
from keras_diffusion.models.distillation import ode_step
from keras_diffusion.samplers.spacing import start_time
from keras_diffusion.schedules.schedule import broadcast_like
from keras_diffusion.utils.untracked import Untracked


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ProgressiveDistillationModel(DiffusionModel):
    """A student whose one DDIM step matches two DDIM steps of its teacher.

    The teacher samples with `teacher_steps` = 2K deterministic DDIM steps
    on the uniform grid t_i = t_start i / 2K (`spacing.start_time`); the
    student learns K steps on t_i = t_start i / K. Each training example
    draws i in {1, ..., K}, t = t_start i / K, x_t = alpha_t x0 + sigma_t eps;
    the teacher takes two DDIM steps t -> t' = t - t_start / 2K -> t'' =
    t - t_start / K, and the student's x0 regresses on the x0 for which one
    DDIM step from t lands on the teacher's x_t'' (Algorithm 2):

        x~ = (x_t'' - (sigma_t'' / sigma_t) x_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

    weighted by max(SNR(t), 1) ("truncated SNR"), the student predicting
    "v" as in the paper. The student starts from the teacher's (EMA)
    weights when the teacher is a `DiffusionModel` and no `denoiser` is
    given; `next_round()` makes the next student (K -> K / 2). Rounds go
    e.g. 64 -> 32 -> ... -> 1 (a round with teacher_steps = 2).

    `generate` samples with DDIM on the student's grid, `num_steps`
    = K by default. **More steps than K is an error**: the student was
    trained only on its K-step grid (use the teacher for more); fewer
    steps are allowed (a coarser grid it was not trained for, worse).

    Args:
        denoiser: the student network; None copies the teacher's (with
            its weights) or builds the default one for a function teacher.
        teacher: a `DiffusionModel` or a model function (as for
            `ConsistencyModel`); None only when loading a trained student.
        teacher_steps: the teacher's number of DDIM steps 2K (even, >= 2).
        teacher_prediction: what a function teacher predicts.
        guidance_scale: the teacher's classifier-free guidance (1: none).
        schedule: the schedule (default: the teacher model's, else "cosine").
        prediction: the student's prediction type (default "v").
        condition_dropout: default 0.
        **kwargs: `DiffusionModel` arguments.

    Example:
    >>> student = ProgressiveDistillationModel(teacher=model, teacher_steps=8)
    >>> student.fit(data, epochs=5)                      # 4 steps
    >>> student = student.next_round(); student.fit(data, epochs=5)  # 2 steps
    >>> x = student.generate(16, seed=0)

    References:
        Salimans & Ho, Progressive Distillation for Fast Sampling of
        Diffusion Models, 2022.
    """

    def __init__(self, denoiser=None, teacher=None, teacher_steps=2, teacher_prediction=None,
                 guidance_scale=1.0, schedule=None, prediction="v", condition_dropout=0.0,
                 **kwargs):
        if isinstance(teacher_steps, bool) or int(teacher_steps) != teacher_steps or int(
            teacher_steps
        ) < 2 or int(teacher_steps) % 2:
            raise ValueError(
                "`teacher_steps` must be an even int >= 2, received "
                f"teacher_steps={teacher_steps!r}"
            )
        is_model = isinstance(teacher, DiffusionModel)
        if schedule is None:
            schedule = teacher.schedule if is_model else "cosine"
        if is_model:
            for key in ("num_classes", "text_encoder", "image_shape", "context_shape",
                        "condition_shape"):
                if kwargs.get(key) is None and getattr(teacher, key) is not None:
                    kwargs[key] = getattr(teacher, key)
            if denoiser is None:
                if teacher.prediction != prediction:
                    raise ValueError(
                        f"The student starts from the teacher's weights, so the teacher must "
                        f"predict prediction={prediction!r} too; received a teacher with "
                        f"prediction={teacher.prediction!r} (pass `denoiser=` for a fresh "
                        "student)"
                    )
                denoiser = copy_denoiser(teacher)
        for key in ("weighting", "time_distribution"):
            kwargs.pop(key, None)
        super().__init__(denoiser=denoiser, schedule=schedule, prediction=prediction,
                         condition_dropout=condition_dropout, **kwargs)
        self.teacher_steps = int(teacher_steps)
        self.teacher_prediction = teacher_prediction
        self.guidance_scale = float(guidance_scale)
        self._teacher = Untracked(None if teacher is None else Teacher(
            teacher, teacher_prediction, student_schedule=self.schedule,
            takes_condition=self.is_conditional,
        ))

    @property
    def student_steps(self):
        """K: the number of DDIM steps the student is trained for."""
        return self.teacher_steps // 2

    @property
    def teacher(self):
        return self._teacher.value

    def set_teacher(self, teacher, teacher_prediction=None):
        self._teacher.value = None if teacher is None else Teacher(
            teacher, teacher_prediction, student_schedule=self.schedule,
            takes_condition=self.is_conditional,
        )

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.teacher is not None:
            self.teacher.check_student(self.image_shape, self.num_classes, self.context_shape)

    def next_round(self, **kwargs):
        """The next round's student (K / 2 steps), starting from this one."""
        if self.student_steps < 2:
            raise ValueError(
                f"This student samples in {self.student_steps} step: there is no further round"
            )
        return ProgressiveDistillationModel(
            teacher=self, teacher_steps=self.student_steps, prediction=self.prediction,
            guidance_scale=1.0, seed=self.seed, **kwargs,
        )

    # --- the loss -------------------------------------------------------------
    def training_loss(self, data):
        if self.teacher is None:
            raise ValueError(
                "Progressive distillation needs a teacher: pass `teacher=` or call "
                "set_teacher(...) (a loaded student has none)"
            )
        x0, cond, valid = self._prepare_batch(data, training=True)
        batch = ops.shape(x0)[0]
        if self.condition_dropout:
            from keras_diffusion.conditioning import ConditionSpec

            cond = ConditionSpec.drop(cond, self._null_condition(batch),
                                      self.condition_dropout, self._training_seed())
        k = float(self.student_steps)
        u = keras.random.uniform((batch,), seed=self._training_seed())
        i = ops.minimum(ops.floor(u * k), k - 1.0) + 1.0  # in {1, ..., K}
        t_start = start_time(self.schedule)
        t = t_start * i / k
        t_mid = t - 0.5 * t_start / k
        t_end = t - t_start / k
        noise = keras.random.normal(ops.shape(x0), seed=self._training_seed())
        x_t = self.schedule.add_noise(x0, noise, t)
        null = self._null_condition(batch)

        def denoise(x, time):
            return self.teacher.denoise(x, time, cond, null, self.guidance_scale)

        x_mid = ode_step("ddim", denoise, x_t, t, t_mid, self.schedule)
        x_end = ops.stop_gradient(ode_step("ddim", denoise, x_mid, t_mid, t_end, self.schedule))
        target = distillation_target(x_t, x_end, t, t_end, self.schedule)
        output = self.denoiser({"x_t": x_t, "t": t, **cond}, training=True)
        x0_hat, _ = objectives.to_x0_epsilon(self.prediction, output, x_t, t, self.schedule)
        error = ops.square(ops.reshape(x0_hat - target, (batch, -1)))
        weight = ops.maximum(ops.exp(self.schedule.log_snr(t)), 1.0)
        losses = weight * ops.mean(error, axis=1)
        loss = ops.sum(losses * valid) / ops.maximum(ops.sum(valid), 1.0)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss, (losses, t, valid)

    def fit(self, x=None, y=None, *args, **kwargs):
        if self.teacher is not None:
            self.teacher.refresh()
        return super().fit(x, y, *args, **kwargs)

    # --- sampling: DDIM on the student's grid ----------------------------------
    def _check_steps(self, num_steps, timesteps):
        if timesteps is None and num_steps is not None and not isinstance(num_steps, bool) \
                and isinstance(num_steps, int) and num_steps > self.student_steps:
            raise ValueError(
                f"This student was distilled to {self.student_steps} DDIM steps; "
                f"num_steps={num_steps} is more than its training produced (sample the "
                "teacher for more steps)"
            )

    def generate(self, num_images=None, labels=None, text=None, condition=None,
                 sampler="ddim", num_steps=None, **kwargs):
        """`DiffusionModel.generate` with DDIM on the student's uniform grid
        (`num_steps` = K by default, at most K)."""
        self._check_steps(num_steps, kwargs.get("timesteps"))
        if num_steps is None and kwargs.get("timesteps") is None:
            num_steps = self.student_steps
        kwargs.setdefault("spacing", "uniform")
        return super().generate(num_images, labels, text, condition, sampler,
                                num_steps=num_steps, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=None, sampler="ddim",
               overwrite=False, **kwargs):
        """`DiffusionModel.export` with DDIM, the uniform grid and
        `max_num_steps` = K (a request for more fails in the graph)."""
        kwargs.setdefault("spacing", "uniform")
        kwargs.setdefault("max_num_steps", self.student_steps)
        return super().export(filepath, format=format, verbose=verbose, sampler=sampler,
                              overwrite=overwrite, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("weighting", "time_distribution"):
            config.pop(key, None)
        config.update({
            "teacher_steps": self.teacher_steps,
            "teacher_prediction": self.teacher_prediction,
            "guidance_scale": self.guidance_scale,
        })
        return config


def distillation_target(x_t, x_end, t, t_end, schedule):
    """The x0 whose DDIM step from (x_t, t) lands on x_end at t_end.

        x~ = (x_end - (sigma_e / sigma_t) x_t) / (alpha_e - (sigma_e / sigma_t) alpha_t)

    (Salimans & Ho, 2022, Algorithm 2), per example (`t`, `t_end` `[batch]`).
    """
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_e, sigma_e = schedule.alpha_sigma(t_end)
    ratio = broadcast_like(sigma_e / sigma_t, x_t)
    return (x_end - ratio * x_t) / (broadcast_like(alpha_e, x_t)
                                    - ratio * broadcast_like(alpha_t, x_t))
