"""Datasets, models and optimizers from a config."""

import keras

from keras_diffusion import data as data_lib
from keras_diffusion.utils import saving


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

    if config.model.kind == "dreambooth":
        return dreambooth_source_fn(config, fn)
    return fn


def dreambooth_source_fn(config, instance_fn):
    """The DreamBooth set (`models.dreambooth.prior_preservation_data`): the
    source's few subject images under the new label, with, under prior
    preservation, `num_class_images` class images drawn now by the frozen base.

    Drawn once, eagerly, before tf.data: the returned function closes over
    the arrays. Subject images repeat so that every class image is used once
    per pass (and a pass holds at least one batch).
    """
    import math

    import numpy as np
    import tensorflow as tf

    from keras_diffusion.models import dreambooth

    b, s = config.model.dreambooth, config.sample
    base = load_dreambooth_base(config)
    images = np.stack([e["images"] for e in instance_fn().as_numpy_iterator()])
    class_label, class_images = dreambooth_class_label(config), None
    wanted = config.data.batch_size
    if b.prior_preservation:
        class_images = dreambooth.generate_class_images(
            base, class_label, b.num_class_images, batch_size=s.batch_size, sampler=s.sampler,
            num_steps=s.num_steps, guidance_scale=s.guidance_scale, seed=config.seed,
        )
        wanted = max(wanted, b.num_class_images / b.prior_loss_weight)
    arrays = dreambooth.prior_preservation_data(
        images, base.num_classes, class_images, class_label,
        prior_loss_weight=b.prior_loss_weight, repeats=max(1, math.ceil(wanted / len(images))),
        prior_preservation=b.prior_preservation, seed=config.seed,
    )
    return lambda: tf.data.Dataset.from_tensor_slices(arrays)


def dreambooth_class_label(config):
    """The prior class of `model.dreambooth` (`class_label`, else `init_from`)."""
    b = config.model.dreambooth
    label = b.class_label if b.class_label >= 0 else b.init_from
    if b.prior_preservation and label < 0:
        raise ValueError(
            "model.dreambooth.prior_preservation=True needs the class of the subject: set "
            "model.dreambooth.class_label (or init_from), received class_label="
            f"{b.class_label}, init_from={b.init_from}"
        )
    return int(label)


def load_dreambooth_base(config):
    """The trained class-conditional model of `model.dreambooth.base_model`."""
    path = config.model.dreambooth.base_model
    if not path:
        raise ValueError(
            "model.kind='dreambooth' needs model.dreambooth.base_model: the path of a trained "
            "class-conditional .keras DiffusionModel, received ''"
        )
    saving.check_keras_file(path, "model.dreambooth.base_model")
    base = saving.load_model(path)
    if not getattr(base, "num_classes", None):
        raise ValueError(
            f"model.dreambooth.base_model={path!r} is not class-conditional "
            f"(num_classes={getattr(base, 'num_classes', None)})"
        )
    return base


def build_dreambooth_model(config, shape):
    """`models.dreambooth.add_label` of the base: one more class, the new
    label; LoRA on every Dense and Conv layer when `lora_rank` > 0 (the label
    embedding, where the new label lives, trains too)."""
    from keras_diffusion.models import dreambooth

    m, b = config.model, config.model.dreambooth
    base = load_dreambooth_base(config)
    if tuple(base.image_shape) != tuple(shape):
        raise ValueError(
            f"model.dreambooth.base_model generates images of shape {tuple(base.image_shape)}, "
            f"but the data (data.image_size, data.channels) have shape {tuple(shape)}"
        )
    if not -1 <= b.init_from < base.num_classes:
        raise ValueError(
            f"model.dreambooth.init_from must be a class in [0, {base.num_classes}) or -1 "
            f"(the mean), received {b.init_from}"
        )
    dreambooth_class_label(config)
    model = dreambooth.add_label(base, None if b.init_from < 0 else b.init_from)
    if m.num_classes and m.num_classes != model.num_classes:
        raise ValueError(
            f"model.num_classes={m.num_classes} must be the base's classes plus the new "
            f"label ({model.num_classes}), or 0"
        )
    if b.lora_rank:
        model.denoiser.enable_lora(b.lora_rank, target="all")
        model.denoiser.label_embed.trainable = True
    return model


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


def build_denoiser(config, shape, context_dim=None):
    from keras_diffusion import models

    m = config.model
    kwargs = dict(m.denoiser_kwargs)
    num_classes = m.num_classes or None
    if context_dim is not None:
        kwargs["context_dim"] = context_dim
    if m.denoiser == "mlp":
        return models.MLPDenoiser(data_dim=shape[-1], num_classes=num_classes, **kwargs)
    if m.denoiser == "unet":
        if m.preset:
            return models.UNet.from_preset(m.preset, **kwargs)
        return models.UNet(input_channels=shape[-1], num_classes=num_classes, **kwargs)
    if m.denoiser == "dit":
        if m.preset:
            return models.DiT.from_preset(m.preset, **kwargs)
        kwargs.setdefault("input_channels", shape[-1])
        return models.DiT(num_classes=num_classes, **kwargs)
    if m.denoiser == "mmdit":
        if m.preset:
            return models.MMDiT.from_preset(m.preset, **kwargs)
        kwargs.setdefault("input_channels", shape[-1])
        return models.MMDiT(num_classes=num_classes, **kwargs)
    raise ValueError(
        f"Unknown model.denoiser={m.denoiser!r}. Valid names: ['unet', 'dit', 'mmdit', 'mlp']"
    )


def build_text_encoder(config):
    """The text encoder of `model.text_encoder` (None when ""), its vocabulary
    adapted on the training captions."""
    m = config.model
    if not m.text_encoder:
        return None
    if m.text_encoder != "text_conditioner":
        raise ValueError(
            f"Unknown model.text_encoder={m.text_encoder!r}. Valid names: ['', "
            "'text_conditioner']"
        )
    if not config.data.captions:
        raise ValueError(
            "model.text_encoder='text_conditioner' learns from captions: set "
            "data.captions=True"
        )
    import tensorflow as tf

    from keras_diffusion import models

    encoder = models.TextConditioner(**dict(m.text_encoder_kwargs))
    captions = source_fn(config)().map(lambda element: element["text"])
    encoder.adapt(captions.batch(1024))
    return encoder


def sample_prompts(config, num):
    """`num` prompts cycled from `sample.prompts` (None: no text model or no prompts)."""
    prompts = [p for p in config.sample.prompts if p]
    if not config.model.text_encoder or not prompts:
        return None
    return [prompts[i % len(prompts)] for i in range(num)]


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
        condition_dropout=m.condition_dropout, seed=config.seed,
        # optim.ema: the model's own average of the weights (with a warm-up).
        ema_decay=config.optim.ema_momentum if config.optim.ema else None, **dict(m.kwargs),
    )
    text_encoder = build_text_encoder(config) if m.kind != "sd_lora" else None
    if text_encoder is not None:
        common["text_encoder"] = text_encoder
    context_dim = None if text_encoder is None else int(text_encoder.embedding_dim)
    if m.kind == "diffusion":
        model = keras_diffusion.DiffusionModel(
            denoiser=build_denoiser(config, shape, context_dim), **common
        )
    elif m.kind == "latent":
        vae = build_vae(config)
        model = keras_diffusion.LatentDiffusionModel(
            vae=vae,
            denoiser=build_denoiser(config, (None, None, int(vae.latent_channels)), context_dim),
            pixel_shape=shape, **dict(m.latent_kwargs), **common,
        )
    elif m.kind == "sd_lora":
        model = build_sd_lora_model(config, common)
    elif m.kind in ("consistency", "progressive_distillation"):
        model = build_distillation_model(config, shape, common)
    elif m.kind == "dreambooth":
        model = build_dreambooth_model(config, shape)
    else:
        raise ValueError(
            f"Unknown model.kind={m.kind!r}. Valid names: ['diffusion', 'latent', 'sd_lora', "
            "'consistency', 'progressive_distillation', 'dreambooth']"
        )
    model.build({"images": (1,) + shape})
    return model


def build_distillation_model(config, shape, common):
    """A `ConsistencyModel` (CD with `model.teacher`, else CT) or a
    `ProgressiveDistillationModel` (one round, from `model.teacher`).

    `model.teacher` is the path of a trained `.keras` DiffusionModel (or of
    the previous round's student); `model.distillation_kwargs` holds the
    model's own arguments (`solver`, `num_timesteps`, `teacher_steps`, ...).
    """
    import keras_diffusion

    m = config.model
    path = m.get("teacher", "")
    teacher = saving.load_model(path) if path else None
    kwargs = {**common, **dict(m.get("distillation_kwargs", {}))}
    if m.kind == "consistency":
        return keras_diffusion.models.ConsistencyModel(
            denoiser=build_denoiser(config, shape), teacher=teacher, **kwargs)
    if teacher is None:
        raise ValueError(
            "model.kind='progressive_distillation' needs model.teacher: the path of a trained "
            ".keras DiffusionModel (v-prediction), received "
            f"model.teacher={path!r}"
        )
    kwargs["schedule"] = teacher.schedule
    return keras_diffusion.models.ProgressiveDistillationModel(teacher=teacher, **kwargs)


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
        gradient_accumulation_steps=(
            o.gradient_accumulation_steps if o.gradient_accumulation_steps > 1 else None
        ),
    )
    if o.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=o.weight_decay, **kwargs)
    if o.optimizer == "adam":
        return keras.optimizers.Adam(**kwargs)
    raise ValueError(f"Unknown optim.optimizer={o.optimizer!r}. Valid: ['adamw', 'adam']")


def build_vae(config):
    """The frozen autoencoder of a latent model (`model.vae`).

    `model.vae`: the path of a trained, saved `.keras` VAE (the normal case),
    "stable_diffusion" (SD 1.x's VAE through keras-cv), or "new" (an
    untrained `keras_diffusion.models.VAE(**model.vae_kwargs)`: smoke tests
    only, its latents mean nothing).
    """
    import os

    from keras_diffusion import models

    m = config.model
    if m.vae == "new":
        from absl import logging

        logging.warning("model.vae='new': an untrained VAE; the latent model will "
                        "learn nothing useful. Give the path of a trained .keras VAE.")
        return models.VAE(input_channels=data_shape(config)[-1], **dict(m.vae_kwargs))
    if m.vae == "stable_diffusion":
        from keras_diffusion.pretrained import stable_diffusion as sd

        size = data_shape(config)
        return sd.StableDiffusionVAE(size[0], size[1], download_weights=m.download_weights)
    if not m.vae:
        raise ValueError(
            f"model.kind={m.kind!r} needs model.vae: the path of a trained .keras VAE "
            "(keras_diffusion.models.VAE), 'stable_diffusion', or 'new' (untrained, "
            "tests only); received model.vae=''"
        )
    saving.check_keras_file(m.vae, "model.vae")
    return saving.load_model(m.vae, compile=False)


class GraphTextEncoder(keras.layers.Layer):
    """SD's CLIP text encoder on string tensors, inside a tf.function.

    `StableDiffusionTextEncoder` tokenizes Python strings; in `train_step`
    the captions are a string tensor, tokenized here with `tf.numpy_function`
    (so the train step cannot be XLA-compiled). Frozen.
    """

    def __init__(self, encoder, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.encoder = encoder
        self.encoder.trainable = False

    def call(self, text, training=False):
        import tensorflow as tf

        text = tf.reshape(tf.convert_to_tensor(text), [-1])
        ids = tf.numpy_function(
            lambda s: self.encoder.tokenize([x.decode() for x in s]), [text], tf.int32
        )
        ids.set_shape([None, self.encoder.max_length])
        return self.encoder(ids, training=False)


def build_sd_lora_model(config, common):
    """Stable Diffusion 1.x (keras-cv weights) with LoRA on the UNet's attention.

    A `LatentDiffusionModel` of the bridge's `StableDiffusionVAE`,
    `StableDiffusionDenoiser` (LoRA of `model.lora_rank` on its attention
    projections, everything else frozen) and `StableDiffusionTextEncoder`
    (frozen; `model.bpe_path` is the tokenizer's merges file). The schedule
    and prediction must be SD's: scaled_linear, epsilon.
    """
    from keras_diffusion.pretrained import stable_diffusion as sd

    m = config.model
    height, width, channels = data_shape(config)
    if height % 8 or width % 8 or channels != 3:
        raise ValueError(
            "model.kind='sd_lora' needs RGB images with sides multiple of 8, received "
            f"data.image_size={config.data.image_size}, data.channels={channels}"
        )
    if m.schedule != "scaled_linear" or m.prediction != "epsilon":
        raise ValueError(
            "model.kind='sd_lora' fine-tunes SD 1.x, trained with "
            "schedule='scaled_linear' and prediction='epsilon'; received "
            f"model.schedule={m.schedule!r}, model.prediction={m.prediction!r}"
        )
    if m.lora_rank < 1:
        raise ValueError(f"model.lora_rank must be >= 1, received {m.lora_rank}")
    if not config.data.captions:
        raise ValueError("model.kind='sd_lora' is text-conditional: set data.captions=True")
    if str(config.train.jit_compile).lower() == "true":
        raise ValueError("model.kind='sd_lora' tokenizes captions in Python: "
                         "train.jit_compile must be 'auto' or 'false'")
    text = sd.StableDiffusionTextEncoder(
        max_length=m.max_text_length, bpe_path=m.bpe_path or None,
        download_weights=m.download_weights,
    )
    denoiser = sd.StableDiffusionDenoiser(
        height, width, max_text_length=m.max_text_length, download_weights=m.download_weights,
    )
    sd.enable_lora(denoiser, m.lora_rank, targets=sd.UNET_LORA_TARGETS)
    vae = sd.StableDiffusionVAE(height, width, download_weights=m.download_weights)
    common = {k: v for k, v in common.items() if k != "num_classes"}
    import keras_diffusion

    return keras_diffusion.LatentDiffusionModel(
        vae=vae, denoiser=denoiser, text_encoder=GraphTextEncoder(text),
        pixel_shape=(height, width, channels), **dict(m.latent_kwargs), **common,
    )

