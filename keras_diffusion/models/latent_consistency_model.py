"""LatentConsistencyModel: LCM and LCM-LoRA, consistency distillation in latent space."""

import numbers

import keras
from keras import ops

from keras_diffusion.models.consistency_model import ConsistencyModel
from keras_diffusion.models.consistency_parameterization import ConsistencyParameterization
from keras_diffusion.models.distillation import build_copy
from keras_diffusion.models.distillation import copy_denoiser
from keras_diffusion.models.latent_diffusion_model import LatentDiffusionModel
from keras_diffusion.samplers.spacing import start_time

GUIDANCE_KEY = "guidance"


@keras.saving.register_keras_serializable(package="keras_diffusion")
class LatentConsistencyModel(ConsistencyModel, LatentDiffusionModel):
    """A latent consistency model (LCM): 1-4 steps on a VAE's latents.

    `ConsistencyModel`'s distillation on a `LatentDiffusionModel` (the data
    are encoded by the frozen VAE, samples decoded), with LCM's choices
    (Luo et al., 2023):

    - **Guidance folded in, over a range of scales.** Each example draws a
      guidance scale w uniformly in `guidance_range`; the teacher's ODE
      step uses classifier-free guidance with that w, and a student whose
      network has a guidance embedding (`guidance_embedding=True` on a
      `UNet`, `DiT` or `MMDiT`: a Fourier embedding of w added to the time
      embedding) is conditioned on it. `generate(guidance_scale=w)` and
      the export's `guidance_scale` input then give w to the network: one
      network call per step, no
      classifier-free guidance at sampling. A student without the
      embedding (LCM-LoRA) learns one scale: `guidance_range` must then be
      one number.
    - **Skipping-step teacher solver.** The grid is uniform in t with
      adjacent times `skipping_step / T` apart (T = the schedule's number
      of training steps, 1000 for continuous schedules), from t_min to
      `samplers.spacing.start_time`; the teacher takes one DDIM step (by
      default; "heun" and "dpm_solver" also work) across k of its steps.
    - **LCM-LoRA.** Call `enable_lora(rank)` on the student's network
      (`from_teacher(..., lora_rank=4)` does it): every other weight is
      frozen, only the LoRA factors train (and the EMA target holds only
      them).

    `from_teacher` builds the student from a trained teacher: its network
    is a copy with the teacher's (EMA) weights, read as the teacher's
    prediction type (`ConsistencyParameterization(network_prediction=...)`),
    with the same VAE, text encoder and classes.

    Args:
        vae: the frozen autoencoder (as `LatentDiffusionModel`).
        denoiser: the student's network (wrapped into
            `ConsistencyParameterization` unless it is one).
        teacher: a trained `LatentDiffusionModel` (or a model function on
            latents, with `teacher_prediction`). None: a loaded model that
            only generates (`set_teacher` to go on training).
        guidance_range: `(w_min, w_max)` of the teacher's guidance, or one
            number (default `(2.0, 8.0)`; LCM used [2, 14] on SD).
        skipping_step: k, the teacher's DDIM step in training steps
            (default 20, LCM's).
        solver: the teacher's ODE step, "ddim" by default.
        **kwargs: `ConsistencyModel` and `LatentDiffusionModel` arguments
            (`text_encoder`, `num_classes`, `target_ema_decay`, ...;
            `num_timesteps` follows from `skipping_step`).

    Example:
    >>> lcm = LatentConsistencyModel.from_teacher(teacher_ldm, guidance_range=(2, 8))
    >>> lcm.fit(dataset_of_images_and_text, epochs=1)
    >>> images = lcm.generate(text=["a seven"], guidance_scale=6.0, num_steps=4, seed=0)

    References:
        Luo, Tan, Huang, Li & Zhao, Latent Consistency Models: Synthesizing
        High-Resolution Images with Few-Step Inference, 2023.
        Luo et al., LCM-LoRA: A Universal Stable-Diffusion Acceleration
        Module, 2023.
    """

    def __init__(self, vae=None, denoiser=None, teacher=None, guidance_range=(2.0, 8.0),
                 skipping_step=20, solver="ddim", **kwargs):
        if isinstance(guidance_range, numbers.Number):
            guidance_range = (guidance_range, guidance_range)
        try:
            w_min, w_max = (float(w) for w in guidance_range)
        except (TypeError, ValueError):
            raise ValueError(
                "`guidance_range` must be (w_min, w_max) or one number, received "
                f"guidance_range={guidance_range!r}"
            ) from None
        if not 0.0 <= w_min <= w_max:
            raise ValueError(
                "`guidance_range` must satisfy 0 <= w_min <= w_max, received "
                f"guidance_range={guidance_range!r}"
            )
        if isinstance(skipping_step, bool) or int(skipping_step) != skipping_step or (
            int(skipping_step) < 1
        ):
            raise ValueError(
                f"`skipping_step` must be a positive int, received skipping_step={skipping_step!r}"
            )
        kwargs.pop("guidance_scale", None)
        kwargs.pop("num_timesteps", None)
        super().__init__(vae=vae, denoiser=denoiser, teacher=teacher, solver=solver,
                         guidance_scale=w_max, num_timesteps=2, **kwargs)
        if self.mode != "distillation":
            raise ValueError(
                "LatentConsistencyModel distills a teacher (mode='distillation'), received "
                f"mode={self.mode!r}"
            )
        self.guidance_range = (w_min, w_max)
        self.skipping_step = int(skipping_step)
        self.num_timesteps = self._grid_points()
        self._check_guidance_range()

    @classmethod
    def from_teacher(cls, teacher, guidance_embedding=True, lora_rank=None,
                     lora_target="all", **kwargs):
        """The student of a trained `LatentDiffusionModel` `teacher`.

        Args:
            teacher: the trained teacher (its VAE, text encoder, classes and
                schedule are the student's).
            guidance_embedding: condition the student on w (a `UNet`,
                `DiT` or `MMDiT` teacher; the embedding's projection starts
                at zero, so the student starts as the teacher).
            lora_rank: LCM-LoRA: enable LoRA of this rank on the copy
                (everything else frozen); needs `guidance_embedding=False`.
            lora_target: which layers get LoRA, passed to the network's
                `enable_lora`: "all" (every Dense and Conv, as LCM-LoRA) or
                "attention" (the attention projections). On the Stable
                Diffusion bridge's `StableDiffusionDenoiser`, "all" is
                every Dense and Conv2D of keras-cv's UNet (184 and 98) and
                "attention" its 128 `to_q` / `to_k` / `to_v` / `out_proj`
                layers; "all" needs about another UNet's memory or more to
                train (Keras' LoRA materializes each full kernel).
            **kwargs: constructor arguments (`guidance_range`, ...).
        """
        if not isinstance(teacher, LatentDiffusionModel):
            raise ValueError(
                "`teacher` must be a trained LatentDiffusionModel, received teacher of type "
                f"{type(teacher).__name__}"
            )
        if lora_rank is not None and guidance_embedding:
            raise ValueError(
                "LCM-LoRA trains only LoRA weights, which would leave a guidance embedding "
                f"untrained: pass guidance_embedding=False with lora_rank={lora_rank}"
            )
        network = copy_denoiser(teacher)
        if guidance_embedding:
            network = _with_guidance_embedding(network, teacher)
        if lora_rank is not None:
            network.enable_lora(int(lora_rank), lora_target)
        student = ConsistencyParameterization(
            network, teacher.schedule, kwargs.pop("sigma_data", 0.5),
            network_prediction=teacher.prediction,
        )
        return cls(
            vae=teacher.vae, denoiser=student, teacher=teacher, schedule=teacher.schedule,
            text_encoder=teacher.text_encoder, num_classes=teacher.num_classes,
            image_shape=teacher.image_shape, pixel_shape=teacher.pixel_shape, **kwargs,
        )

    # --- w ----------------------------------------------------------------
    @property
    def guidance_input(self):
        """The condition key of w when the network embeds it (else None)."""
        embeds = self.denoiser is not None and getattr(self.denoiser, "guidance_embedding",
                                                       False)
        return GUIDANCE_KEY if embeds else None

    def _check_guidance_range(self):
        if self.denoiser is not None and self.guidance_input is None and (
            self.guidance_range[0] != self.guidance_range[1]
        ):
            raise ValueError(
                "A student without a guidance embedding learns one guidance scale: pass "
                "guidance_range=w (one number) or a denoiser with guidance_embedding=True; "
                f"received guidance_range={self.guidance_range}"
            )

    def build(self, input_shape=None):
        super().build(input_shape)
        self._check_guidance_range()

    def _null_condition(self, batch):
        null = super()._null_condition(batch)
        if self.guidance_input is not None:
            null[GUIDANCE_KEY] = ops.ones((batch,), "float32")
        return null

    def _training_condition(self, cond, batch):
        if self.guidance_input is None:
            return cond
        w_min, w_max = self.guidance_range
        u = keras.random.uniform((batch,), seed=self._training_seed())
        return {**cond, GUIDANCE_KEY: w_min + (w_max - w_min) * u}

    def _teacher_denoise(self, x, t, cond, null):
        if GUIDANCE_KEY not in cond:
            return self.teacher.denoise(x, t, cond, null, self.guidance_range[0])
        w = ops.reshape(cond[GUIDANCE_KEY], (-1,) + (1,) * (len(x.shape) - 1))
        strip = lambda d: {k: v for k, v in d.items() if k != GUIDANCE_KEY}  # noqa: E731
        return self.teacher.denoise(x, t, strip(cond), strip(null), w)

    # --- the skipping-step grid -------------------------------------------
    def _train_timesteps(self):
        return float(getattr(self.schedule, "num_train_timesteps", None) or 1000)

    def _grid_points(self):
        t_start = float(ops.convert_to_numpy(start_time(self.schedule)))
        span = (t_start - self.schedule.t_min) * self._train_timesteps()
        points = int(span // self.skipping_step) + 1
        if points < 2:
            raise ValueError(
                f"`skipping_step`={self.skipping_step} leaves fewer than 2 grid times on a "
                f"schedule of {int(self._train_timesteps())} steps"
            )
        return points

    def grid_times(self, index, num_points):
        """t_min + index * k / T: the skipping-step grid (`num_points` fixed)."""
        step = self.skipping_step / self._train_timesteps()
        return self.schedule.t_min + ops.cast(index, "float32") * step

    # --- sampling ------------------------------------------------------------
    def generate(self, num_images=None, labels=None, text=None, condition=None,
                 sampler="consistency", **kwargs):
        """`ConsistencyModel.generate`; `guidance_scale` is w, given to the
        network (default: the middle of `guidance_range`)."""
        if self.guidance_input is not None:
            kwargs.setdefault("guidance_scale", 0.5 * sum(self.guidance_range))
        return super().generate(num_images, labels, text, condition, sampler, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("guidance_scale", None)
        config.pop("num_timesteps", None)
        config.update({"guidance_range": list(self.guidance_range),
                       "skipping_step": self.skipping_step})
        return config


def _with_guidance_embedding(network, teacher):
    """A copy of `network` with `guidance_embedding=True` and its weights."""
    config = network.get_config()
    if "guidance_embedding" not in config:
        raise ValueError(
            f"The teacher's {type(network).__name__} has no guidance embedding option "
            "(UNet, DiT and MMDiT have one): pass guidance_embedding=False"
        )
    copy = build_copy(type(network).from_config({**config, "guidance_embedding": True}),
                      teacher, **{GUIDANCE_KEY: ops.ones((1,), "float32")})
    source = {_local_path(v): v for v in network.variables}
    for v in copy.variables:
        match = source.get(_local_path(v))
        if match is not None:
            v.assign(match.value)
        elif "guidance" not in v.path:
            raise ValueError(f"No teacher weight for {v.path} in the copy of the denoiser")
    return copy


def _local_path(variable):
    return variable.path.split("/", 1)[-1]
