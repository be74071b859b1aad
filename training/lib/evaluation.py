"""Sample-quality and likelihood metrics for `--mode eval`.

FID and KID (keras_diffusion.metrics) of `eval.num_samples` generated
examples against as many real ones, with a pluggable feature extractor, and
the negative ELBO in bits per dimension (keras_diffusion.metrics.likelihood)
on a few held-out batches.
"""

import math
import os
import time

import numpy as np
from absl import logging

from keras_diffusion import data as data_lib
from keras_diffusion.utils import saving
from training.lib import builders


def check_feature_extractor(config):
    """Fails fast on a bad `eval.feature_extractor` (before any compute)."""
    name = config.eval.feature_extractor
    if name in ("", "inception", "identity"):
        return
    if not os.path.exists(name):
        raise FileNotFoundError(
            f"eval.feature_extractor={name!r} is neither 'inception', 'identity', '' "
            "nor the path of a saved Keras classifier (no such file)"
        )


def build_feature_extractor(config):
    """The `FeatureExtractor` of `eval.feature_extractor`, built now.

    InceptionV3's ImageNet weights are fetched here, so that a machine
    without network access fails with a clear error before sampling.
    """
    import keras

    from keras_diffusion.metrics import FeatureExtractor

    e = config.eval
    check_feature_extractor(config)
    if e.feature_extractor in ("inception", "identity"):
        extractor = FeatureExtractor(e.feature_extractor, batch_size=min(e.batch_size, 50))
        if e.feature_extractor == "inception":
            extractor.model  # Builds InceptionV3: RuntimeError saying what to do offline.
        return extractor
    saving.check_keras_file(e.feature_extractor, "eval.feature_extractor")
    model = saving.load_model(e.feature_extractor, compile=False)
    if e.feature_layer:
        try:
            layer = model.get_layer(e.feature_layer)
        except ValueError as error:
            raise ValueError(
                f"eval.feature_layer={e.feature_layer!r} is not a layer of the classifier "
                f"{e.feature_extractor!r}; its layers: {[l.name for l in model.layers]}"
            ) from error
        model = keras.Model(model.inputs, layer.output)
    return FeatureExtractor(model, batch_size=e.batch_size)


def _eval_batches(config, batch_size, drop_remainder=False):
    return data_lib.prepare_dataset(
        builders.source_fn(config, split=config.eval.split or None)(), batch_size,
        repeat=False, shuffle_buffer=0, cache=False, seed=config.seed,
        drop_remainder=drop_remainder,
    )


def real_examples(config, num):
    """The first `num` examples of the eval data: (images, labels, texts)."""
    images, labels, texts = [], [], []
    count = 0
    for batch in _eval_batches(config, config.eval.batch_size):
        images.append(batch["images"].numpy())
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
        if "text" in batch:
            texts.extend(t.decode() for t in batch["text"].numpy())
        count += len(images[-1])
        if count >= num:
            break
    if not images:
        raise ValueError("The eval dataset is empty: no real examples for FID/KID.")
    images = np.concatenate(images)[:num]
    labels = np.concatenate(labels)[:num] if labels else None
    return images, labels, (texts[:num] or None)


def sample_quality(model, config, workdir, extractor):
    """{"fid", "kid", "kid_std", "num_samples"} of generated vs real examples."""
    from training.lib import monitor as monitor_lib

    e, s = config.eval, config.sample
    real, _, texts = real_examples(config, e.num_samples)
    num = len(real)
    if num < 2:
        raise ValueError(f"FID/KID need at least 2 real examples, the eval data has {num}")
    if num < e.num_samples:
        logging.warning("The eval data has %d examples (< eval.num_samples=%d): FID/KID "
                        "over %d.", num, e.num_samples, num)
    sampler, steps = e.sampler or s.sampler, e.sample_steps or s.num_steps
    start = time.time()
    logging.info("FID/KID: generating %d samples (%s, %d steps) and comparing their %s "
                 "features with %d real examples.", num, sampler, steps,
                 extractor.name, num)
    generated = model.generate(
        num, labels=monitor_lib.sample_labels(config, num), text=texts,
        sampler=sampler, num_steps=steps,
        guidance_scale=e.guidance_scale if e.guidance_scale >= 0 else s.guidance_scale,
        seed=s.seed, batch_size=min(s.batch_size, num), use_ema=False, verbose=0,
    )
    logging.info("FID/KID: %d samples generated in %.0f s; computing features.", num,
                 time.time() - start)
    from keras_diffusion.metrics import compute_statistics
    from keras_diffusion.metrics import frechet_distance
    from keras_diffusion.metrics import kernel_inception_distance
    from keras_diffusion.metrics import load_or_compute_statistics

    split = (e.split or config.data.split) if config.data.name == "tfds" else "all"
    cache = os.path.join(
        workdir, "eval", f"real_statistics_{extractor.name}_{split}_{num}.npz"
    )
    # Real features once per workdir, extractor and size; the generated ones
    # once for both metrics.
    real_stats = load_or_compute_statistics(cache, real, extractor)
    gen_stats = compute_statistics(generated, extractor)
    fid = frechet_distance(real_stats["mu"], real_stats["sigma"],
                           gen_stats["mu"], gen_stats["sigma"])
    kid, kid_std = kernel_inception_distance(
        np.asarray(real_stats["features"]), gen_stats["features"],
        num_subsets=e.kid_num_subsets, subset_size=min(e.kid_subset_size, num),
        seed=config.seed,
    )
    return {
        "fid": float(fid),
        "kid": float(kid),
        "kid_std": float(kid_std),
        "num_samples": int(num),
    }


def bits_per_dim(model, config):
    """Mean negative ELBO in bits/dim over `eval.bpd_num_batches` batches, or None."""
    from keras_diffusion.metrics import likelihood

    e = config.eval
    if config.model.kind != "diffusion":
        logging.info("bits/dim: skipped for model.kind=%r (latent models' ELBO is not a "
                     "likelihood of the pixels).", config.model.kind)
        return None
    num_steps = e.bpd_num_steps or getattr(model.schedule, "num_train_timesteps", None)
    if not num_steps:
        logging.info("bits/dim: skipped, the schedule %s is continuous; set "
                     "eval.bpd_num_steps to evaluate a T-step chain.",
                     type(model.schedule).__name__)
        return None
    image_data = len(model.image_shape) == 3
    decoder = "discretized" if image_data else "gaussian"
    values = []
    unconditional = None
    start = time.time()
    for i, batch in enumerate(_eval_batches(config, e.batch_size).take(e.bpd_num_batches)):
        if i == 0:
            _log_bpd_plan(model, batch, num_steps, e.bpd_num_batches)
        labels = batch.get("labels") if model.num_classes else None
        context = None
        if "text" in batch and getattr(model, "text_encoder", None) is not None:
            context = model.encode_text(batch["text"])
        if labels is None and context is None:
            if unconditional is None:
                unconditional = likelihood.make_elbo_fn(
                    model.model_fn(), schedule=model.schedule, prediction=model.prediction,
                    num_steps=num_steps, decoder=decoder,
                )
            x0 = likelihood._check_data(batch["images"], image_data, "data")
            import tensorflow as tf

            out = unconditional(x0, tf.constant([config.seed, i + 1], tf.int32))
        else:
            out = likelihood.elbo(
                model.model_fn(labels=labels, context=context), batch["images"],
                schedule=model.schedule, prediction=model.prediction,
                num_steps=num_steps, decoder=decoder, seed=config.seed + 1000 * (i + 1),
            )
        values.append(np.asarray(out["bits_per_dim"]))
        elapsed = time.time() - start
        logging.info("bits/dim: batch %d/%d: %.4f (%.0f s elapsed, about %.0f s left)",
                     i + 1, e.bpd_num_batches, float(np.mean(values[-1])), elapsed,
                     elapsed / (i + 1) * (e.bpd_num_batches - i - 1))
    if not values:
        return None
    bpd = float(np.mean(np.concatenate(values)))
    return bpd if math.isfinite(bpd) else float("nan")


def _log_bpd_plan(model, batch, num_steps, num_batches):
    """Logs what the bits/dim chain computes and about how long it takes.

    The estimate: `num_steps` network calls per batch, each timed once on
    this batch (the model at t = 0.5, after one warm-up call).
    """
    images = batch["images"]
    model({"images": images})  # warm-up (the first call may trace or build)
    start = time.time()
    model({"images": images})
    per_call = time.time() - start
    logging.info(
        "bits/dim: the negative ELBO of the %d-step chain on %d batch(es) of %d: %d "
        "network calls per batch, about %.0f s in all (%.3f s per call).", num_steps,
        num_batches, int(images.shape[0]), num_steps, per_call * num_steps * num_batches,
        per_call,
    )
