"""Rectified-flow reflow (Liu et al., 2022): straighten a flow on its own couplings.

`generate_pairs` draws (noise, sample) pairs from a trained flow (or any
model function), `ReflowModel` trains a new flow on them with `fit`, and
`straightness` measures how straight a flow's paths are.
"""

import keras
import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import random as random_lib
from keras_diffusion import samplers as samplers_lib
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.samplers.spacing import start_std
from keras_diffusion.samplers.spacing import start_time


def generate_pairs(model, num_pairs, seed=0, sampler="euler", num_steps=100, labels=None,
                   batch_size=None, schedule=None, prediction=None, shape=None):
    """(noise, sample) pairs of a flow: the coupling reflow trains on.

    Args:
        model: a `DiffusionModel` (its `generate` is used: pair i's noise is
            `random.initial_noise`'s, the noise `generate(seed=seed)` starts
            from), or a model function `model_fn(x_t, t)` with `schedule`,
            `prediction` and `shape`.
        num_pairs: how many pairs.
        seed: an int seed.
        sampler, num_steps: the ODE sampler (deterministic: "euler",
            "heun", "dpm_solver", ...) and its steps.
        labels: class labels for a class-conditional model.
        batch_size: samples per sampler call.
        schedule, prediction, shape: for a model function: its schedule,
            prediction type and the data shape without batch.

    Returns:
        `(noise, samples)`, numpy float32 arrays of the same shape.
    """
    if isinstance(model, DiffusionModel):
        model._ensure_built()
        noise = random_lib.initial_noise((num_pairs,) + tuple(model.image_shape), seed)
        samples = model.generate(num_pairs, labels=labels, sampler=sampler, num_steps=num_steps,
                                 seed=seed, batch_size=batch_size, clip=False, verbose=0)
        return np.asarray(ops.convert_to_numpy(noise), "float32"), samples
    if not callable(model) or schedule is None or prediction is None or shape is None:
        raise ValueError(
            "`model` must be a DiffusionModel, or a model function with `schedule`, "
            f"`prediction` and `shape`; received model of type {type(model).__name__}, "
            f"schedule={schedule!r}, prediction={prediction!r}, shape={shape!r}"
        )
    noise = random_lib.initial_noise((num_pairs,) + tuple(shape), seed)
    samples = samplers_lib.get(sampler).sample(
        model, noise, schedule=schedules_lib.get(schedule), prediction=prediction,
        num_steps=num_steps, seed=seed,
    )
    return (np.asarray(ops.convert_to_numpy(noise), "float32"),
            np.asarray(ops.convert_to_numpy(samples), "float32"))


def straightness(model_fn, noise, schedule, prediction, num_steps=32):
    """The straightness of a flow's paths (Liu et al., 2022, Definition 2.4).

        S = int_0^1 E || (Z_1 - Z_0) - dZ_tau / dtau ||^2 dtau

    along the Euler paths from the noise Z_0 to the sample Z_1, in the path
    time tau = 1 - t / t_start (t_start = `spacing.start_time`, 1 on
    rectified flow but for its alpha(1) = 0 end, see there); the velocity
    is the model's probability-flow velocity converted from `prediction`. S
    is 0 for straight paths (one Euler step is then exact). The squared norm
    is summed over the data's dimensions and averaged over the batch.

    Args:
        model_fn: `model_fn(x_t, t)`.
        noise: standard normal noise `(B, ...)`.
        schedule: a schedule or its name.
        prediction: what `model_fn` predicts.
        num_steps: Euler steps of the quadrature.

    Returns:
        A Python float.
    """
    schedule = schedules_lib.get(schedule)
    t_start = float(ops.convert_to_numpy(start_time(schedule)))
    x = ops.cast(ops.convert_to_tensor(noise), "float32") * start_std(schedule, t_start)
    times = t_start * (1.0 - np.arange(num_steps + 1) / num_steps)
    start = x
    velocities = []
    for k in range(num_steps):
        t = ops.full((ops.shape(x)[0],), float(times[k]))
        v = objectives.convert(model_fn(x, t), x, t, schedule, prediction, "flow")
        velocities.append(v)
        x = x + float(times[k + 1] - times[k]) * v
    # dZ/dtau = -t_start v (tau = 1 - t / t_start), Z_1 - Z_0 = x - start.
    displacement = x - start
    total = 0.0
    for v in velocities:
        diff = ops.reshape(displacement + t_start * v, (ops.shape(x)[0], -1))
        total += float(ops.convert_to_numpy(ops.mean(ops.sum(ops.square(diff), axis=1))))
    return total / num_steps


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ReflowModel(DiffusionModel):
    """A flow trained on given (noise, sample) pairs: one reflow round.

    `fit` takes batches `{"images": samples, "noise": noise, ...}` (labels
    etc. as for `DiffusionModel`), e.g. from `generate_pairs`; the loss is
    the library's diffusion loss with x_t = alpha x0 + sigma noise on the
    pair's own noise, so the new flow learns the coupling's straighter
    paths. With `distill=True` every example is at t = t_start (the grid
    start, `spacing.start_time`): the model learns the map noise -> sample
    for one Euler step (Liu et al.'s distillation, k-rectified flow to one
    step). Sampling and export are `DiffusionModel`'s ("euler" is the
    natural sampler).

    Args:
        denoiser: the network (None: the default one).
        schedule: default "rectified_flow".
        prediction: default "flow".
        distill: train at t = t_start only (one-step distillation).
        condition_dropout: default 0.
        **kwargs: `DiffusionModel` arguments.

    Example:
    >>> noise, samples = generate_pairs(flow_model, 50000, seed=0)
    >>> reflow = ReflowModel(MLPDenoiser(data_dim=2))
    >>> reflow.fit({"images": samples, "noise": noise}, batch_size=512, epochs=10)
    >>> x = reflow.generate(1000, sampler="euler", num_steps=1, seed=0)

    References:
        Liu, Gong & Liu, Flow Straight and Fast: Learning to Generate and
        Transfer Data with Rectified Flow, 2022.
    """

    def __init__(self, denoiser=None, schedule="rectified_flow", prediction="flow",
                 distill=False, condition_dropout=0.0, **kwargs):
        super().__init__(denoiser=denoiser, schedule=schedule, prediction=prediction,
                         condition_dropout=condition_dropout, **kwargs)
        self.distill = bool(distill)

    @staticmethod
    def _split(data):
        if not isinstance(data, dict) or "noise" not in data:
            raise ValueError(
                "ReflowModel trains on pairs: batches must be dicts "
                "{'images': samples, 'noise': noise, ...}, received "
                f"{type(data).__name__}"
                + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
            )
        rest = {k: v for k, v in data.items() if k != "noise"}
        return rest, ops.cast(data["noise"], "float32")

    def _peek(self, x, y=None):
        if isinstance(x, dict) and "noise" in x:
            rest, _ = self._split(x)
            super()._peek(rest, y)  # Raises on an empty dataset.
            return x, x
        return super()._peek(x, y)

    def _check_first_batch(self, batch):
        if isinstance(batch, tuple) and len(batch) == 1:
            batch = batch[0]
        rest, noise = self._split(batch)
        images = rest.get("images", rest.get("latents"))
        if tuple(noise.shape) != tuple(images.shape):
            raise ValueError(
                f"`noise` of shape {tuple(noise.shape)} does not match the samples' shape "
                f"{tuple(images.shape)}"
            )
        return super()._check_first_batch(rest)

    def _times(self, batch):
        if self.distill:
            return ops.full((batch,), 1.0) * start_time(self.schedule)
        return objectives.sample_time(
            self.time_distribution, batch, self.schedule, seed=self._training_seed(),
            loc=self.logit_normal_loc, scale=self.logit_normal_scale,
        )

    def training_loss(self, data):
        rest, noise = self._split(data)
        x0, cond, valid = self._prepare_batch(rest, training=True)
        batch = ops.shape(x0)[0]
        if self.condition_dropout:
            from keras_diffusion.conditioning import ConditionSpec

            cond = ConditionSpec.drop(cond, self._null_condition(batch),
                                      self.condition_dropout, self._training_seed())
        t = self._times(batch)
        losses = self.per_example_loss(x0, noise, t, cond, training=True)
        loss = ops.sum(losses * valid) / ops.maximum(ops.sum(valid), 1.0)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss, (losses, t, valid)

    def eval_losses(self, data):
        rest, noise = self._split(data)
        x0, cond, valid = self._prepare_batch(rest, training=False)
        batch = ops.shape(x0)[0]
        times = [None] if self.distill else self.eval_times()
        for tk in times:
            t = self._times(batch) if tk is None else ops.full((batch,), float(tk))
            yield self.per_example_loss(x0, noise, t, cond, training=False), t, valid

    def get_config(self):
        return {**super().get_config(), "distill": self.distill}
