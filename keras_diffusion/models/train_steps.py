"""The train and test steps of a diffusion model, one per backend.

Both call the model's backend-neutral `training_loss(data)` (the shared loss
of `objectives.diffusion_loss`) and `eval_loss(data)`, and update its
metrics with `update_metrics(losses, t, valid)`:

- TensorFlow: `tf.GradientTape`; under a `tf.distribute` strategy the loss is
  divided by the number of replicas, so the summed gradients are those of
  the global-batch mean; `optimizer.scale_loss` for mixed_float16.
- JAX: stateless, as Keras' own JAX trainer: the variables' values come in
  `state`, are read through a `keras.StatelessScope`, and the updated values
  (seed generator, optimizer with EMA and gradient accumulation, metrics)
  go out.
- Both: after the optimizer's step, the model's weight average
  (`model.ema`, a `WeightAverage`) when it keeps one, moved only when the
  optimizer applied (not on gradient-accumulation steps).
"""

import keras
from keras import ops

from keras_diffusion.utils.tensorflow_ops import num_replicas


def _read(value):
    """The value now (a copy: a TensorFlow variable converts to a handle that
    is read later)."""
    return ops.copy(ops.convert_to_tensor(value))


def tensorflow_train_step(model, data):
    import tensorflow as tf

    trainable = model.trainable_variables
    with tf.GradientTape() as tape:
        # Under the tape, so that a trainable text encoder learns too.
        loss, (losses, t, valid) = model.training_loss(data)
        # Gradients are summed over replicas: divide by their number.
        scaled = model.optimizer.scale_loss(loss / num_replicas())
    grads = tape.gradient(scaled, trainable)
    before = _read(model.optimizer.iterations)
    model.optimizer.apply_gradients(zip(grads, trainable))
    if getattr(model, "ema", None) is not None:
        model.ema.update(applied=_read(model.optimizer.iterations) > before)
    model.update_metrics(losses, t, valid)
    return {m.name: m.result() for m in model.metrics}


def tensorflow_test_step(model, data):
    for losses, t, valid in model.eval_losses(data):
        model.update_metrics(losses, t, valid)
    return {m.name: m.result() for m in model.metrics}


def _values_after(scope, variables):
    out = []
    for v in variables:
        value = scope.get_current_value(v)
        out.append(v.value if value is None else value)
    return out


def _metrics_step(model, metrics_values, updates):
    mapping = list(zip(model.metrics_variables, metrics_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        for losses, t, valid in updates:
            model.update_metrics(losses, t, valid)
        logs = {m.name: m.result() for m in model.metrics}
    return logs, _values_after(scope, model.metrics_variables)


def _iterations(optimizer, optimizer_values):
    with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
        return _read(optimizer.iterations)


def _state_mapping(model, trainable, non_trainable):
    return list(zip(model.trainable_variables, trainable)) + list(
        zip(model.non_trainable_variables, non_trainable)
    )


def _average_step(model, trainable, non_trainable, optimizer_before, optimizer_after):
    """The model's weight average (`model.ema`) after the optimizer's step
    (from the optimizer's values before and after it)."""
    if getattr(model, "ema", None) is None:
        return non_trainable
    applied = _iterations(model.optimizer, optimizer_after) > _iterations(
        model.optimizer, optimizer_before
    )
    with keras.StatelessScope(
        state_mapping=_state_mapping(model, trainable, non_trainable)
    ) as scope:
        model.ema.update(applied=applied)
    return _values_after(scope, model.non_trainable_variables)


def jax_train_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_values, metrics_values = state

    def loss_fn(trainable_values, non_trainable_values):
        mapping = _state_mapping(model, trainable_values, non_trainable_values)
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss, aux = model.training_loss(data)
        new_non_trainable = _values_after(scope, model.non_trainable_variables)
        unscaled = loss
        with keras.StatelessScope(
            state_mapping=list(zip(model.optimizer.variables, optimizer_values))
        ):
            loss = model.optimizer.scale_loss(loss)
        return loss, (unscaled, aux, new_non_trainable)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (_, aux, non_trainable)), grads = grad_fn(trainable, non_trainable)
    optimizer_before = optimizer_values
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    non_trainable = _average_step(model, trainable, non_trainable, optimizer_before,
                                  optimizer_values)
    logs, metrics_values = _metrics_step(model, metrics_values, [aux])
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def jax_test_step(model, state, data):
    trainable, non_trainable, metrics_values = state
    with keras.StatelessScope(state_mapping=_state_mapping(model, trainable, non_trainable)):
        updates = list(model.eval_losses(data))
    logs, metrics_values = _metrics_step(model, metrics_values, updates)
    return logs, (trainable, non_trainable, metrics_values)


def train_step(model, *args):
    if keras.backend.backend() == "jax":
        return jax_train_step(model, *args)
    if keras.backend.backend() == "tensorflow":
        return tensorflow_train_step(model, *args)
    raise NotImplementedError(
        f"DiffusionModel.fit supports the TensorFlow and JAX backends, not "
        f"{keras.backend.backend()!r}"
    )


def test_step(model, *args):
    if keras.backend.backend() == "jax":
        return jax_test_step(model, *args)
    if keras.backend.backend() == "tensorflow":
        return tensorflow_test_step(model, *args)
    raise NotImplementedError(
        f"DiffusionModel.evaluate supports the TensorFlow and JAX backends, not "
        f"{keras.backend.backend()!r}"
    )
