"""DreamBooth (Ruiz et al., 2023) for class-conditional models: a new label
bound to a subject, fine-tuned with the prior-preservation loss.

Two helpers on top of `DiffusionModel.fit`:

- `add_label(model, init_from)`: a copy of a class-conditional model with
  one more class, the new label `num_classes` (the "rare token"), its
  embedding initialized from the class `init_from`; the null label moves to
  the end, so classifier-free guidance keeps working.
- `prior_preservation_data(...)`: the fine-tuning data: the few subject
  images under the new label, mixed with class images (drawn by the frozen
  base with `generate_class_images`) under the class label. With `n`
  subject examples and `round(prior_loss_weight * n)` class examples per
  epoch, shuffled together, the expected batch loss is proportional to
  L_subject + prior_loss_weight * L_prior: DreamBooth's loss (their eq. 2
  with lambda = `prior_loss_weight`) from `fit`'s plain mean.

Full fine-tuning is `fit` on the copy; LoRA is `model.denoiser.enable_lora(
rank)` before `fit` (the LoRA weights train, the rest is frozen).

Example:
>>> tuned = add_label(base, init_from=3)            # new label 10
>>> class_images = generate_class_images(base, 3, 200, seed=0)
>>> data = prior_preservation_data(subject_images, 10, class_images, 3,
...                                prior_loss_weight=1.0, repeats=40)
>>> tuned.fit(data, batch_size=32, epochs=1)
>>> tuned.generate(labels=[10] * 8)                 # the subject

References:
    Ruiz et al., DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
    Subject-Driven Generation, 2023.
"""

import keras
import numpy as np


def add_label(model, init_from=None):
    """A copy of a class-conditional `DiffusionModel` with one more class.

    Args:
        model: a built class-conditional `DiffusionModel` whose denoiser
            embeds labels in a `label_embed` layer (`UNet`, `DiT`).
        init_from: the class whose embedding initializes the new label's
            (None: the mean of the class embeddings).

    Returns:
        A new `DiffusionModel` (not compiled) with `num_classes + 1` classes;
        the new label is the old `num_classes`.
    """
    num_classes = getattr(model, "num_classes", None)
    denoiser = getattr(model, "denoiser", None)
    if num_classes is None or not hasattr(denoiser, "label_embed"):
        raise ValueError(
            "`model` must be a built class-conditional DiffusionModel whose denoiser "
            f"has a `label_embed` layer, received num_classes={num_classes}"
        )
    if init_from is not None and not 0 <= int(init_from) < num_classes:
        raise ValueError(
            f"`init_from` must be a class in [0, {num_classes}), received init_from={init_from}"
        )
    config = denoiser.get_config()
    config["num_classes"] = num_classes + 1
    new_denoiser = type(denoiser).from_config(config)
    new = type(model).from_config({**model.get_config(), "denoiser": new_denoiser,
                                   "num_classes": num_classes + 1})
    new.build()
    for source, target in zip(denoiser.weights, new_denoiser.weights):
        if source.path.endswith("label_embed/embeddings"):
            table = keras.ops.convert_to_numpy(source)
            row = table[:num_classes].mean(0) if init_from is None else table[int(init_from)]
            # Classes, the new label, then the null label.
            target.assign(np.concatenate([table[:num_classes], row[None], table[-1:]]))
        else:  # A copy (on JAX, not the base's buffer, which fit would donate).
            target.assign(keras.ops.convert_to_numpy(source))
    return new


def generate_class_images(base, class_label, num_images, batch_size=100, **generate_kwargs):
    """`num_images` samples of `class_label` from the frozen base model (the
    class-specific prior of DreamBooth); `generate_kwargs` go to
    `base.generate` (sampler, num_steps, guidance_scale, seed, ...)."""
    return base.generate(labels=np.full((int(num_images),), int(class_label), "int32"),
                         batch_size=batch_size, verbose=0, **generate_kwargs)


def prior_preservation_data(instance_images, instance_label, class_images=None,
                            class_label=None, prior_loss_weight=1.0, repeats=1,
                            prior_preservation=True, seed=0):
    """The DreamBooth fine-tuning set: `{"images", "labels"}` numpy arrays.

    Args:
        instance_images: the few subject images `(n, H, W, C)`.
        instance_label: the label bound to the subject (e.g. the new label of
            `add_label`).
        class_images: images of the class drawn by the frozen base
            (`generate_class_images`); required when `prior_preservation`.
        class_label: their label: one int (DreamBooth's class prior), or
            one label per class image (a prior over several classes, e.g.
            samples of every class of a class-conditional base).
        prior_loss_weight: lambda > 0: class examples per subject example.
        repeats: how often each subject image appears per epoch.
        prior_preservation: False gives the subject images alone (plain
            fine-tuning, which drifts on the class).
        seed: the shuffle's seed.

    Returns:
        A dict of shuffled arrays for `DiffusionModel.fit`.
    """
    instance_images = np.asarray(instance_images)
    if instance_images.ndim < 2 or len(instance_images) == 0:
        raise ValueError(
            "`instance_images` must be a non-empty batch of images, received shape "
            f"{instance_images.shape}"
        )
    if int(repeats) < 1:
        raise ValueError(f"`repeats` must be >= 1, received repeats={repeats}")
    images = np.repeat(instance_images, int(repeats), axis=0)
    labels = np.full((len(images),), int(instance_label), "int32")
    if prior_preservation:
        if class_images is None or len(class_images) == 0:
            raise ValueError(
                "prior_preservation=True needs `class_images` (samples of the class from "
                "the frozen base, see generate_class_images), received class_images="
                f"{None if class_images is None else np.shape(class_images)}"
            )
        if class_label is None:
            raise ValueError("prior_preservation=True needs `class_label`, received None")
        class_labels = np.asarray(class_label)
        if class_labels.ndim > 1 or (
            class_labels.ndim == 1 and len(class_labels) != len(class_images)
        ):
            raise ValueError(
                "`class_label` must be one label or one per class image "
                f"({len(class_images)}), received shape {class_labels.shape}"
            )
        if not float(prior_loss_weight) > 0:
            raise ValueError(
                f"`prior_loss_weight` must be > 0, received prior_loss_weight={prior_loss_weight}"
            )
        class_images = np.asarray(class_images)
        if class_images.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"`class_images` of shape {class_images.shape[1:]} (without batch) do not "
                f"match `instance_images` of shape {instance_images.shape[1:]}"
            )
        num_prior = int(round(float(prior_loss_weight) * len(images)))
        index = np.arange(num_prior) % len(class_images)
        images = np.concatenate([_as_float(images), _as_float(class_images[index])])
        prior_labels = (np.full((num_prior,), int(class_labels), "int32") if class_labels.ndim == 0
                        else class_labels[index].astype("int32"))
        labels = np.concatenate([labels, prior_labels])
    order = np.random.default_rng(seed).permutation(len(images))
    return {"images": images[order], "labels": labels[order]}


def _as_float(images):
    """uint8 images -> float32 in [-1, 1] (DiffusionModel's rescaling); floats kept."""
    if images.dtype == np.uint8:
        return images.astype("float32") / 127.5 - 1.0
    return images.astype("float32")
