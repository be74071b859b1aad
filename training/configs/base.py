"""Every key a training config may have, with its default.

Config files start from `get_base_config()` and change values; a key that is
not here is an error (`training.lib.config.validate`), so a typo fails at
start instead of being ignored. Free-form keyword arguments go in the
`*_kwargs` dicts.
"""

import ml_collections


def get_base_config():
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    # "mnist", "toy2d", "image_folder", "tfrecord" or "tfds".
    data.name = "mnist"
    data.path = ""  # image folder, or TFRecord glob
    data.tfds_name = ""  # tensorflow-datasets name (data.name == "tfds")
    data.split = "train"
    data.data_dir = ""  # tensorflow-datasets data_dir ("" = default)
    data.image_size = 32
    data.channels = 3
    data.crop = "center"
    data.labels = True  # read class labels
    data.captions = False  # read captions ("text")
    data.random_flip = False
    data.cache = True
    data.shuffle_buffer = 10_000
    data.batch_size = 64  # global batch size, over all replicas
    data.toy2d_dataset = "gaussian_mixture"  # data.name == "toy2d"
    data.toy2d_num_points = 4096

    config.model = model = ml_collections.ConfigDict()
    # "diffusion" (DiffusionModel), "latent" (LatentDiffusionModel),
    # "sd_lora" (Stable Diffusion through keras_diffusion.pretrained),
    # "dreambooth" (a new label on a trained class-conditional model),
    # "consistency" or "progressive_distillation" (few-step models).
    model.kind = "diffusion"
    model.denoiser = "unet"  # "unet", "dit", "mmdit", "mlp"
    model.denoiser_kwargs = ml_collections.ConfigDict(
        {"base_channels": 32, "channel_multipliers": (1, 2, 2), "num_res_blocks": 1}
    )
    model.preset = ""  # a denoiser preset name (from_preset) instead
    model.schedule = "cosine"
    model.schedule_kwargs = ml_collections.ConfigDict()
    model.prediction = "v"  # as DiffusionModel's default (see its DEFAULT_PREDICTION)
    model.weighting = "none"
    model.time_distribution = "uniform"
    model.num_classes = 0  # 0: unconditional
    model.condition_dropout = 0.1
    model.kwargs = ml_collections.ConfigDict()  # other model arguments
    # model.kind == "consistency" or "progressive_distillation": the path of
    # the trained .keras teacher ("" for consistency training, no teacher),
    # and the distillation model's own arguments (e.g. teacher_steps).
    model.teacher = ""
    model.distillation_kwargs = ml_collections.ConfigDict()
    # model.kind == "latent": the frozen autoencoder. The path of a trained
    # .keras VAE, "stable_diffusion" (SD 1.x's, keras-cv) or "new" (an
    # untrained VAE(**vae_kwargs): smoke tests only).
    model.vae = ""
    model.vae_kwargs = ml_collections.ConfigDict()
    # Other LatentDiffusionModel arguments (encode_sample, decode_batch_size, ...).
    model.latent_kwargs = ml_collections.ConfigDict()
    # Text conditioning (data.captions=True): "" (none) or "text_conditioner"
    # (keras_diffusion.models.TextConditioner(**text_encoder_kwargs), its
    # vocabulary adapted on the training captions, trained jointly). The
    # denoiser's context_dim is set to its embedding_dim.
    model.text_encoder = ""
    model.text_encoder_kwargs = ml_collections.ConfigDict()
    # model.kind == "sd_lora" (and model.vae == "stable_diffusion").
    model.lora_rank = 4
    model.bpe_path = ""  # CLIP tokenizer merges file ("" = keras-cv downloads it)
    model.max_text_length = 77
    model.download_weights = True  # keras-cv's SD 1.x weights (network or its cache)
    # model.kind == "dreambooth" (keras_diffusion.models.dreambooth): fine-tune
    # the class-conditional `base_model` (.keras) on the data's few subject
    # images, bound to a new label (the base's num_classes), its embedding
    # initialized from class `init_from` (-1: the mean). With
    # `prior_preservation`, `num_class_images` samples of `class_label` (-1:
    # init_from) drawn by the frozen base (with the `sample.*` sampler, steps
    # and guidance) join the data, weighted by `prior_loss_weight`.
    # `lora_rank` > 0 trains LoRA only; 0 is full fine-tuning.
    model.dreambooth = ml_collections.ConfigDict({
        "base_model": "", "init_from": -1, "class_label": -1, "prior_preservation": True,
        "prior_loss_weight": 1.0, "num_class_images": 200, "lora_rank": 0,
    })

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adamw"  # "adamw" or "adam"
    optim.lr = 2e-4
    optim.lr_schedule = "constant"  # "constant" or "cosine" (after warmup)
    optim.warmup_steps = 100
    optim.weight_decay = 0.0
    optim.clipnorm = 1.0  # 0: none
    optim.ema = True  # the model's average of the weights (DiffusionModel's ema_decay)
    optim.ema_momentum = 0.999  # its decay after the warm-up
    optim.gradient_accumulation_steps = 1

    config.train = train = ml_collections.ConfigDict()
    train.num_steps = 1000
    # One checkpoint every this many steps; num_steps must be a multiple.
    train.checkpoint_every = 200
    train.keep_checkpoints = 3
    train.log_every = 50
    train.sample_every = 500  # sample grid to TensorBoard; 0: never
    train.num_sample_images = 16
    train.jit_compile = "auto"  # "true", "false" or "auto": XLA where the strategy and device allow it
    train.steps_per_execution = 1
    train.mixed_precision = False
    train.deterministic = False  # tf.config.experimental.enable_op_determinism()

    config.sample = sample = ml_collections.ConfigDict()
    sample.sampler = "ddim"
    sample.num_steps = 50
    sample.guidance_scale = 1.0
    sample.num_images = 64
    sample.batch_size = 64
    sample.seed = 0
    sample.use_ema = True
    # Prompts of text models, cycled over the images ("" / (): unconditional).
    sample.prompts = ("",)

    config.eval = ev = ml_collections.ConfigDict()
    ev.num_batches = 8  # batches for the loss of `--mode eval`
    ev.batch_size = 64
    # The split `--mode eval` reads ("" = data.split); tfds sources only,
    # the others have one split.
    ev.split = ""
    # FID and KID of `num_samples` generated vs `num_samples` real examples.
    # feature_extractor: "inception" (InceptionV3 pool3, ImageNet weights,
    # fetched by Keras: needs network or ~/.keras/models), the path of a
    # saved Keras classifier (.keras), "identity" (the data are the
    # features: vectors, tiny tests) or "" (no FID/KID).
    ev.feature_extractor = "inception"
    ev.feature_layer = ""  # a layer of the saved classifier to take features from ("" = output)
    ev.num_samples = 1000
    ev.kid_subset_size = 1000  # lowered to num_samples when larger
    ev.kid_num_subsets = 100
    # Generation for FID/KID: "" / 0 / -1 take the `sample.*` values.
    ev.sampler = ""
    ev.sample_steps = 0
    ev.guidance_scale = -1.0
    # Negative ELBO in bits per dimension (keras_diffusion.metrics.likelihood)
    # on `bpd_num_batches` batches (0: none) of `batch_size`: pixel-space
    # models only. bpd_num_steps: the chain's T (0: the schedule's own T;
    # continuous schedules need one).
    ev.bpd_num_batches = 2
    ev.bpd_num_steps = 0

    config.export = ex = ml_collections.ConfigDict()
    # DPM-Solver++ (2M), as keras_diffusion.export's default and the README;
    # num_steps and guidance_scale are inputs of the SavedModel.
    ex.sampler = "dpm_solver"

    config.distribution = dist = ml_collections.ConfigDict()
    # Logical CPU devices for --strategy=mirrored on a machine without GPUs.
    dist.num_cpu_replicas = 2
    dist.tpu = ""  # TPU name/address for --strategy=tpu
    return config


def get_config():
    return get_base_config()
