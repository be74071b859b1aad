"""Datasets, models and optimizers from a config."""

import keras

from keras_diffusion import data as data_lib


def _size(config):
    return config.data.image_size or None


def check_data_available(config):
    """Fails fast (before any compute) when the dataset is missing."""
    import os

    d = config.data
    if d.name == "image_folder" and not os.path.isdir(d.path):
        raise FileNotFoundError(f"Image folder not found: data.path={d.path!r}")
    if d.name == "tfrecord":
        import tensorflow as tf

        if not tf.io.gfile.glob(d.path):
            raise FileNotFoundError(f"No TFRecord files match data.path={d.path!r}")
    if d.name == "tfds":
        data_lib.check_tfds_available(d.tfds_name, data_dir=d.data_dir or None)


def source_fn(config, split=None):
    """A function returning the unbatched source dataset of the config.

    `split` overrides `data.split` (tensorflow-datasets sources only).
    """
    d = config.data
    split = split or d.split

    def fn():
        if d.name == "mnist":
            return data_lib.mnist_dataset(
                image_size=d.image_size or 28, captions=d.captions, labels=d.labels,
                seed=config.seed,
            )
        if d.name == "toy2d":
            return data_lib.toy2d_dataset(d.toy2d_dataset, d.toy2d_num_points, seed=config.seed)
        if d.name == "image_folder":
            return data_lib.image_folder_dataset(
                d.path, _size(config), labels="inferred" if d.labels else None,
                captions=d.captions, crop=d.crop, channels=d.channels,
            )
        if d.name == "tfrecord":
            return data_lib.tfrecord_dataset(
                d.path, _size(config), labels=d.labels, captions=d.captions,
                channels=d.channels, crop=d.crop,
            )
        return data_lib.tfds_dataset(d.tfds_name, split, data_dir=d.data_dir or None,
                                     label_key="label" if d.labels else None)

    return fn


def data_shape(config):
    d = config.data
    if d.name == "toy2d":
        return (2,)
    size = d.image_size or 28
    channels = 1 if d.name == "mnist" else d.channels
    return (size, size, channels)


def pipeline_kwargs(config):
    d = config.data
    return dict(
        random_flip=d.random_flip, cache=d.cache, shuffle_buffer=d.shuffle_buffer,
        seed=config.seed,
    )


def build_denoiser(config, shape):
    from keras_diffusion import models

    m = config.model
    kwargs = dict(m.denoiser_kwargs)
    num_classes = m.num_classes or None
    if m.denoiser == "mlp":
        return models.MLPDenoiser(data_dim=shape[-1], num_classes=num_classes, **kwargs)
    if m.denoiser == "unet":
        if m.preset:
            return models.UNet.from_preset(m.preset, **kwargs)
        return models.UNet(input_channels=shape[-1], num_classes=num_classes, **kwargs)
    if m.denoiser == "dit":
        if m.preset:
            return models.DiT.from_preset(m.preset, **kwargs)
        return models.DiT(num_classes=num_classes, **kwargs)
    raise ValueError(
        f"Unknown model.denoiser={m.denoiser!r}. Valid names: ['unet', 'dit', 'mlp']"
    )


def build_model(config):
    """The model of the config (built, not compiled). Call under strategy.scope()."""
    import keras_diffusion
    from keras_diffusion import schedules

    m = config.model
    shape = data_shape(config)
    schedule = schedules.get(m.schedule, **dict(m.schedule_kwargs))
    common = dict(
        schedule=schedule, prediction=m.prediction, weighting=m.weighting,
        time_distribution=m.time_distribution, num_classes=m.num_classes or None,
        condition_dropout=m.condition_dropout, seed=config.seed, **dict(m.kwargs),
    )
    if m.kind == "diffusion":
        model = keras_diffusion.DiffusionModel(denoiser=build_denoiser(config, shape), **common)
    elif m.kind == "latent":
        try:
            cls = keras_diffusion.LatentDiffusionModel
        except (ImportError, AttributeError) as e:
            raise RuntimeError(
                "model.kind='latent' needs keras_diffusion.LatentDiffusionModel, "
                f"which is not available in this version ({e})"
            ) from e
        model = cls(denoiser=build_denoiser(config, shape), **common)
    elif m.kind == "sd_lora":
        from keras_diffusion import pretrained

        factory = getattr(pretrained, "stable_diffusion_lora_model", None)
        if factory is None:
            raise RuntimeError(
                "model.kind='sd_lora' needs keras_diffusion.pretrained."
                "stable_diffusion_lora_model (the keras-cv bridge), not available "
                "in this version"
            )
        model = factory(**common)
    else:
        raise ValueError(
            f"Unknown model.kind={m.kind!r}. Valid names: ['diffusion', 'latent', 'sd_lora']"
        )
    model.build({"images": (1,) + shape})
    return model


def build_optimizer(config):
    o = config.optim
    if o.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"Unknown optim.lr_schedule={o.lr_schedule!r}. Valid: ['constant', 'cosine']")
    decay_steps = max(config.train.num_steps - o.warmup_steps, 1)
    lr = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if o.warmup_steps else o.lr,
        decay_steps=decay_steps,
        alpha=1.0 if o.lr_schedule == "constant" else 0.0,
        warmup_target=o.lr if o.warmup_steps else None,
        warmup_steps=o.warmup_steps,
    )
    kwargs = dict(
        learning_rate=lr,
        clipnorm=o.clipnorm or None,
        use_ema=o.ema,
        ema_momentum=o.ema_momentum,
        gradient_accumulation_steps=(
            o.gradient_accumulation_steps if o.gradient_accumulation_steps > 1 else None
        ),
    )
    if o.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=o.weight_decay, **kwargs)
    if o.optimizer == "adam":
        return keras.optimizers.Adam(**kwargs)
    raise ValueError(f"Unknown optim.optimizer={o.optimizer!r}. Valid: ['adamw', 'adam']")
