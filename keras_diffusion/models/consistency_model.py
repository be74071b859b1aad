"""ConsistencyModel: consistency distillation and consistency training with `fit`."""

import math

import keras
from keras import ops

from keras_diffusion.models.consistency_parameterization import ConsistencyParameterization
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.distillation import SOLVERS
from keras_diffusion.models.distillation import Teacher
from keras_diffusion.models.distillation import mean_squared
from keras_diffusion.models.distillation import ode_step
from keras_diffusion.models.distillation import pseudo_huber
from keras_diffusion.samplers.spacing import grid_time
from keras_diffusion.utils.untracked import Untracked

DISTANCES = ("l2", "pseudo_huber")
LOSS_WEIGHTINGS = ("none", "ict")
TIME_DRAWS = ("uniform", "lognormal")
MODES = ("distillation", "training")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ConsistencyModel(DiffusionModel):
    """A consistency model: one to four steps from noise to data.

    The denoiser is wrapped into `ConsistencyParameterization`, the
    consistency function f(x_t, t) = c_skip x_t / alpha + c_out F(x_t, t)
    with f(x, t_min) = x / alpha(t_min), on any schedule of the library. Its
    times are a Karras grid t_min = t_0 < ... < t_{N-1} = t_start
    (`samplers.spacing.grid_time`, rho = 7) and each step draws a pair of
    neighbours (t_n, t_{n+1}) per example:

    - **Consistency distillation** (`teacher` given). x_{t_{n+1}} =
      alpha x0 + sigma z; the teacher takes one ODE step to t_n with
      `solver` ("ddim", "heun" or "dpm_solver", `distillation.ode_step`),
      with classifier-free guidance `guidance_scale` folded in (as LCM does:
      the student learns the guided ODE and is sampled without guidance);
      the loss is d(f(x_{t_{n+1}}, t_{n+1}), f^-(x^_{t_n}, t_n)) with f^- the
      target network, an EMA of the student with `target_ema_decay`
      (updated before each step, so it includes the current weights).
    - **Consistency training** (no teacher; Song & Dhariwal's iCT recipe by
      default). x_{t_n} = alpha_n x0 + sigma_n z with the same z; the target
      is the student itself without gradient (`target_ema_decay=0`), the
      distance pseudo-Huber with c = 0.00054 sqrt(d), the weight
      1 / (sigma~_{n+1} - sigma~_n) (sigma~ = sigma / alpha), n drawn from
      the lognormal over noise levels (P_mean = -1.1, P_std = 2), and N
      follows the curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1 with
      K' = floor(K / (log2(s1 / s0) + 1)) over `total_steps` = K.

    Both train with `fit` on the data of any `DiffusionModel` (labels, text,
    contexts); a class- or text-conditional teacher is given the student's
    conditions. `generate` and `export` sample with `ConsistencySampler`
    (1 step by default; `num_steps` 1-4 or chosen `timesteps`) through the
    shared runner. `evaluate` reports the x0 error of f on the fixed grid.

    The teacher is not part of the model: it is neither trained nor saved
    (a loaded model generates; pass a teacher again to go on distilling).

    Args:
        denoiser: the network F (wrapped here); None builds the default one
            sized from the data, as `DiffusionModel` does.
        schedule: a schedule or its name (default "cosine").
        teacher: a trained `DiffusionModel` (its EMA weights are used when
            kept), or a model function `model_fn(x_t, t)`
            (`model_fn(x_t, t, condition)` for conditional students, with
            `condition` the dict of denoiser inputs), e.g.
            `testing.GaussianMixture(...).denoiser(schedule, "x0")`.
            None: consistency training.
        teacher_prediction: what a function teacher predicts (required
            for a function).
        solver: the teacher's ODE step: "heun" (default), "ddim" or
            "dpm_solver".
        guidance_scale: classifier-free guidance of the teacher (1: none).
        num_timesteps: N of distillation (default 18); for training, the
            curriculum's start s0 when `final_timesteps` is set.
        final_timesteps: the curriculum's end s1 (training; default 1280).
        total_steps: K, the training steps over which the curriculum runs
            (training; default 100000).
        distance: "l2" (mean squared error) or "pseudo_huber"; default
            "l2" for distillation, "pseudo_huber" for training.
        huber_c: c of the pseudo-Huber distance per sqrt(dimension).
        target_ema_decay: the target network's EMA decay (distillation:
            default 0.95; training: 0, the iCT target).
        loss_weighting: "none" or "ict" (1 / (sigma~_{n+1} - sigma~_n));
            default "none" for distillation, "ict" for training.
        time_draw: "uniform" or "lognormal" over the N - 1 pairs; default
            "uniform" for distillation, "lognormal" for training.
        lognormal_mean, lognormal_std: iCT's P_mean and P_std.
        sigma_data: the data's standard deviation (c_skip, c_out).
        rho: the Karras grid's exponent.
        condition_dropout: probability of the null condition in training
            (default 0: a distilled student is sampled unguided).
        mode: "distillation" or "training"; default: "distillation" when a
            `teacher` is given. (A loaded distilled model keeps its mode:
            `set_teacher` before training it further.)
        **kwargs: `DiffusionModel` arguments (`num_classes`, `text_encoder`,
            `image_shape`, `seed`, ...).

    Example:
    >>> gmm = keras_diffusion.testing.GaussianMixture.ring()
    >>> teacher = gmm.denoiser(schedules.CosineSchedule(), "x0")
    >>> model = ConsistencyModel(MLPDenoiser(data_dim=2), teacher=teacher,
    ...                          teacher_prediction="x0")
    >>> model.fit(gmm.sample(50000), batch_size=512, epochs=5)
    >>> x = model.generate(1000, num_steps=2, seed=0)

    References:
        Song, Dhariwal, Chen & Sutskever, Consistency Models, 2023.
        Song & Dhariwal, Improved Techniques for Training Consistency
        Models, 2023.
        Luo, Tan, Huang, Li & Zhao, Latent Consistency Models, 2023.
    """

    def __init__(
        self,
        denoiser=None,
        schedule="cosine",
        teacher=None,
        teacher_prediction=None,
        solver="heun",
        guidance_scale=1.0,
        num_timesteps=None,
        final_timesteps=None,
        total_steps=None,
        distance=None,
        huber_c=0.00054,
        target_ema_decay=None,
        loss_weighting=None,
        time_draw=None,
        lognormal_mean=-1.1,
        lognormal_std=2.0,
        sigma_data=0.5,
        rho=7.0,
        condition_dropout=0.0,
        mode=None,
        **kwargs,
    ):
        for key in ("prediction", "weighting", "time_distribution"):
            kwargs.pop(key, None)
        super().__init__(
            denoiser=None, schedule=schedule, prediction="x0",
            condition_dropout=condition_dropout, **kwargs,
        )
        if mode is None:
            mode = "distillation" if teacher is not None else "training"
        if mode not in MODES:
            raise ValueError(f"Unknown `mode`: {mode!r}. Valid names: {list(MODES)}")
        if mode == "training" and teacher is not None:
            raise ValueError(
                "mode='training' (consistency training) takes no `teacher`; leave "
                "mode=None or use mode='distillation'"
            )
        distill = mode == "distillation"
        self.mode = mode
        if solver not in SOLVERS:
            raise ValueError(f"Unknown `solver`: {solver!r}. Valid names: {list(SOLVERS)}")
        distance = distance or ("l2" if distill else "pseudo_huber")
        loss_weighting = loss_weighting or ("none" if distill else "ict")
        time_draw = time_draw or ("uniform" if distill else "lognormal")
        for name, value, valid in (
            ("distance", distance, DISTANCES),
            ("loss_weighting", loss_weighting, LOSS_WEIGHTINGS),
            ("time_draw", time_draw, TIME_DRAWS),
        ):
            if value not in valid:
                raise ValueError(f"Unknown `{name}`: {value!r}. Valid names: {list(valid)}")
        if target_ema_decay is None:
            target_ema_decay = 0.95 if distill else 0.0
        if not 0.0 <= float(target_ema_decay) < 1.0:
            raise ValueError(
                "`target_ema_decay` must be in [0, 1), received "
                f"target_ema_decay={target_ema_decay}"
            )
        if num_timesteps is None:
            num_timesteps = 18 if distill else 10
        if final_timesteps is None and not distill:
            final_timesteps = 1280
        if total_steps is None and not distill:
            total_steps = 100_000
        for name, value in (("num_timesteps", num_timesteps),
                            ("final_timesteps", final_timesteps),
                            ("total_steps", total_steps)):
            if value is not None and (isinstance(value, bool) or int(value) < 2
                                      or int(value) != value):
                raise ValueError(f"`{name}` must be an int >= 2, received {name}={value!r}")
        if final_timesteps is not None and int(final_timesteps) < int(num_timesteps):
            raise ValueError(
                f"`final_timesteps`={final_timesteps} must be >= num_timesteps={num_timesteps}"
            )
        if not float(guidance_scale) >= 0:
            raise ValueError(
                f"`guidance_scale` must be >= 0, received guidance_scale={guidance_scale}"
            )
        if denoiser is not None and not isinstance(denoiser, ConsistencyParameterization):
            denoiser = ConsistencyParameterization(denoiser, self.schedule, sigma_data)
        if denoiser is not None:
            classes = denoiser.num_classes
            if self.num_classes is None:
                self.num_classes = None if classes is None else int(classes)
            elif classes is not None and int(classes) != self.num_classes:
                raise ValueError(
                    f"`num_classes`={self.num_classes} does not match the denoiser's "
                    f"num_classes={classes}"
                )
        self.denoiser = denoiser
        self.solver = solver
        self.guidance_scale = float(guidance_scale)
        self.num_timesteps = int(num_timesteps)
        self.final_timesteps = None if final_timesteps is None else int(final_timesteps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.distance = distance
        self.huber_c = float(huber_c)
        self.target_ema_decay = float(target_ema_decay)
        self.loss_weighting = loss_weighting
        self.time_draw = time_draw
        self.lognormal_mean = float(lognormal_mean)
        self.lognormal_std = float(lognormal_std)
        self.sigma_data = float(sigma_data)
        self.rho = float(rho)
        self.teacher_prediction = teacher_prediction
        self._teacher = Untracked(None if teacher is None else Teacher(
            teacher, teacher_prediction, student_schedule=self.schedule,
            takes_condition=self.num_classes is not None or self.text_encoder is not None
            or kwargs.get("context_shape") is not None,
        ))
        self.step_counter = keras.Variable(0.0, trainable=False, name="consistency_step")
        self.target_variables = []

    @property
    def teacher(self):
        """The `distillation.Teacher` (None for consistency training)."""
        return self._teacher.value

    def set_teacher(self, teacher, teacher_prediction=None):
        """Sets (or with None, removes) the teacher, e.g. after loading."""
        self._teacher.value = None if teacher is None else Teacher(
            teacher, teacher_prediction, student_schedule=self.schedule,
            takes_condition=self.is_conditional,
        )
        if self.built and self.teacher is not None:
            self.teacher.check_student(self.image_shape, self.num_classes, self.context_shape)

    # --- building -------------------------------------------------------------
    def _default_denoiser(self, shape):
        return ConsistencyParameterization(
            super()._default_denoiser(shape), self.schedule, self.sigma_data
        )

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.teacher is not None:
            self.teacher.check_student(self.image_shape, self.num_classes, self.context_shape)
        if self.target_ema_decay > 0 and not self.target_variables:
            targets = []
            for i, v in enumerate(self.denoiser.trainable_variables):
                target = keras.Variable(ops.copy(v.value), trainable=False, name=f"target_{i}")
                # An attribute each: tf.train.Checkpoint (the training
                # script's resume) tracks variables held in attributes, not
                # in Keras' tracked lists.
                setattr(self, f"target_{i}", target)
                targets.append(target)
            self.target_variables = targets

    # --- the grid ---------------------------------------------------------------
    def _num_points(self):
        """N, the number of grid times at the current step (the curriculum)."""
        if self.final_timesteps is None:
            return ops.convert_to_tensor(float(self.num_timesteps))
        s0, s1 = float(self.num_timesteps), float(self.final_timesteps)
        stages = math.floor(math.log2(s1 / s0)) + 1
        per_stage = max(math.floor(self.total_steps / stages), 1)
        doublings = ops.floor(self.step_counter / per_stage)
        return ops.minimum(s0 * ops.power(2.0, doublings), s1) + 1.0

    def _max_points(self):
        return (self.final_timesteps or self.num_timesteps) + 1

    def grid_times(self, index, num_points):
        """The time of grid point `index` (0: t_min) of an N-point grid."""
        frac = 1.0 - ops.cast(index, "float32") / (num_points - 1.0)
        return grid_time(self.schedule, frac, "karras", self.rho)

    def _rescaled_sigma(self, t):
        alpha, sigma = self.schedule.alpha_sigma(t)
        return sigma / alpha

    def _draw_pairs(self, batch, num_points):
        """Grid indices n of the pairs (t_n, t_{n+1}), per example."""
        if self.time_draw == "uniform":
            u = keras.random.uniform((batch,), seed=self._training_seed())
            return ops.minimum(ops.floor(u * (num_points - 1.0)), num_points - 2.0)
        m = self._max_points() - 1
        j = ops.cast(ops.arange(m), "float32")
        valid = j < num_points - 1.0
        lo = ops.log(self._rescaled_sigma(self.grid_times(ops.minimum(j, num_points - 2.0),
                                                          num_points)))
        hi = ops.log(self._rescaled_sigma(self.grid_times(ops.minimum(j + 1.0, num_points - 1.0),
                                                          num_points)))
        scale = math.sqrt(2.0) * self.lognormal_std
        mass = ops.erf((hi - self.lognormal_mean) / scale) - ops.erf(
            (lo - self.lognormal_mean) / scale
        )
        logits = ops.where(valid, ops.log(ops.maximum(mass, 1e-30)), -1e30)
        n = keras.random.categorical(
            ops.expand_dims(logits, 0), batch, seed=self._training_seed()
        )[0]
        return ops.cast(n, "float32")

    # --- the loss ----------------------------------------------------------------
    def _target_scope(self):
        """A scope in which the denoiser reads the target network's weights."""
        trainable = self.denoiser.trainable_variables
        mapping = [(v, t.value) for v, t in zip(trainable, self.target_variables)]
        ids = {id(v) for v in trainable}
        mapping += [(v, v.value) for v in self.denoiser.variables if id(v) not in ids]
        return keras.StatelessScope(state_mapping=mapping)

    def _distance(self, a, b):
        if self.distance == "l2":
            return mean_squared(a, b)
        dim = 1
        for d in a.shape[1:]:
            dim *= int(d)
        return pseudo_huber(a, b, self.huber_c * math.sqrt(dim))

    def consistency_loss(self, x0, cond, noise, n, num_points, training=True):
        """The per-example consistency loss for grid pairs `n`, `[batch]`.

        Returns `(losses, t_{n+1})`.
        """
        t_lo = self.grid_times(n, num_points)
        t_hi = self.grid_times(n + 1.0, num_points)
        x_hi = self.schedule.add_noise(x0, noise, t_hi)
        if self.mode == "distillation":
            if self.teacher is None:
                raise ValueError(
                    "Consistency distillation needs a teacher: pass `teacher=` or call "
                    "set_teacher(...) (a loaded model has none)"
                )
            null = self._null_condition(ops.shape(x0)[0])

            def denoise(x, t):
                return self._teacher_denoise(x, t, cond, null)

            x_lo = ops.stop_gradient(
                ode_step(self.solver, denoise, x_hi, t_hi, t_lo, self.schedule)
            )
        else:
            x_lo = self.schedule.add_noise(x0, noise, t_lo)

        def f(x, t):
            return self.denoiser({"x_t": x, "t": t, **cond}, training=training)

        if self.target_variables:
            with self._target_scope():
                target = f(x_lo, t_lo)
        else:
            target = f(x_lo, t_lo)
        losses = self._distance(f(x_hi, t_hi), ops.stop_gradient(target))
        if self.loss_weighting == "ict":
            gap = self._rescaled_sigma(t_hi) - self._rescaled_sigma(t_lo)
            losses = losses / ops.maximum(gap, 1e-12)
        return losses, t_hi

    def _teacher_denoise(self, x, t, cond, null):
        """The teacher's guided (x0, eps) at per-example times `t`."""
        return self.teacher.denoise(x, t, cond, null, self.guidance_scale)

    def _training_condition(self, cond, batch):
        """The student's condition inputs of a training batch (LCM adds w)."""
        return cond

    def _update_target(self):
        mu = self.target_ema_decay
        for target, v in zip(self.target_variables, self.denoiser.trainable_variables):
            target.assign(mu * target.value + (1.0 - mu) * ops.stop_gradient(v.value))

    def training_loss(self, data):
        """The training step's loss: `(loss, (losses, t, valid))`."""
        x0, cond, valid = self._prepare_batch(data, training=True)
        batch = ops.shape(x0)[0]
        if self.condition_dropout:
            from keras_diffusion.conditioning import ConditionSpec

            cond = ConditionSpec.drop(
                cond, self._null_condition(batch), self.condition_dropout,
                self._training_seed(),
            )
        cond = self._training_condition(cond, batch)
        self._update_target()
        num_points = self._num_points()
        n = self._draw_pairs(batch, num_points)
        noise = keras.random.normal(ops.shape(x0), seed=self._training_seed())
        losses, t = self.consistency_loss(x0, cond, noise, n, num_points)
        self.step_counter.assign(self.step_counter.value + 1.0)
        loss = ops.sum(losses * valid) / ops.maximum(ops.sum(valid), 1.0)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss, (losses, t, valid)

    def fit(self, x=None, y=None, *args, **kwargs):
        if self.teacher is not None:
            self.teacher.refresh()
        return super().fit(x, y, *args, **kwargs)

    # --- sampling and export: the consistency sampler by default --------------
    def generate(self, num_images=None, labels=None, text=None, condition=None,
                 sampler="consistency", **kwargs):
        """`DiffusionModel.generate` with `ConsistencySampler` (1 step) by default."""
        return super().generate(num_images, labels, text, condition, sampler, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=None, sampler="consistency",
               overwrite=False, **kwargs):
        """`DiffusionModel.export` with `ConsistencySampler` by default."""
        return super().export(filepath, format=format, verbose=verbose, sampler=sampler,
                              overwrite=overwrite, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("prediction", "weighting", "time_distribution"):
            config.pop(key, None)
        config.update(
            {
                "solver": self.solver,
                "guidance_scale": self.guidance_scale,
                "num_timesteps": self.num_timesteps,
                "final_timesteps": self.final_timesteps,
                "total_steps": self.total_steps,
                "distance": self.distance,
                "huber_c": self.huber_c,
                "target_ema_decay": self.target_ema_decay,
                "loss_weighting": self.loss_weighting,
                "time_draw": self.time_draw,
                "lognormal_mean": self.lognormal_mean,
                "lognormal_std": self.lognormal_std,
                "sigma_data": self.sigma_data,
                "rho": self.rho,
                "teacher_prediction": self.teacher_prediction,
                "mode": self.mode,
            }
        )
        return config
