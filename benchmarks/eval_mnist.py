"""FID, KID and bits per dimension of a saved MNIST DiffusionModel.

The published FID uses InceptionV3 features; for 28x28 digits (and offline)
this script uses the penultimate layer of a small CNN classifier trained on
the 1,000 held-out shipped digits (the seeded 4,000/1,000 split of
benchmarks/mnist.py), the usual practice for MNIST. The classifier and the
held-out digits' feature statistics are cached next to the results,
so numbers are comparable between runs.

- FID / KID: `--num_images` unconditional (or, for a class-conditional
  model, label-balanced with `--guidance`) samples against the held-out
  digits, in the classifier's feature space.
- bits per dimension: DDPM's discrete-time ELBO with the discretized 8-bit
  decoder (`keras_diffusion.metrics.likelihood.elbo`) on `--elbo_images`
  held-out digits, padded to the model's image size like the training data;
  with `--ode` also the probability-flow ODE bound with uniform
  dequantization. For a class-conditional model the likelihood is that of
  the unconditional model (the null label, trained by condition dropout).

    python benchmarks/eval_mnist.py --model benchmarks/results/mnist.keras

Writes eval_mnist.json and eval_mnist.md in --out (the judge's cache in
--cache_dir).
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_diffusion.models  # noqa: F401  Registers DiffusionModel for load_model.
from keras_diffusion.data.mnist import load_mnist
from keras_diffusion.data.mnist import pad_or_resize
from keras_diffusion.metrics import FID
from keras_diffusion.metrics import KID
from keras_diffusion.metrics import FeatureExtractor
from keras_diffusion.metrics import load_or_compute_statistics
from keras_diffusion.metrics import likelihood


def to_unit_range(images):
    return images.astype("float32") / 127.5 - 1.0


def center_crop(images, size):
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top : top + size, left : left + size]


def classifier_trunk(path, images, labels, epochs=8):
    """The feature extractor: a CNN's penultimate layer, trained once and cached."""
    if os.path.exists(path):
        model = keras.saving.load_model(path)
    else:
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(inputs)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dropout(0.3)(h)
        features = keras.layers.Dense(128, activation="relu", name="features")(h)
        outputs = keras.layers.Dense(10)(keras.layers.Dropout(0.3)(features))
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        keras.utils.set_random_seed(0)
        model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0)
        model.save(path)
    return model, keras.Model(model.inputs, model.get_layer("features").output)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="benchmarks/results/mnist.keras")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache_dir", default="benchmarks/results/cache",
                        help="where the judge classifier and real statistics are cached")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--sampler", default="dpm_solver")
    parser.add_argument("--num_steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--elbo_images", type=int, default=100)
    parser.add_argument("--ode", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split_seed", type=int, default=0,
                        help="the --seed benchmarks/mnist.py trained with")
    args = parser.parse_args()

    if not os.path.exists(args.model):
        raise SystemExit(f"No saved model at --model={args.model!r}: train one first "
                         "(benchmarks/mnist.py writes benchmarks/results/mnist.keras).")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.cache_dir, exist_ok=True)
    model = keras.saving.load_model(args.model)
    images, labels = load_mnist()
    # The split of benchmarks/mnist.py: a seeded permutation (the shipped
    # digits are sorted by class), 4,000 for the diffusion model, 1,000 held out.
    order = np.random.default_rng(args.split_seed).permutation(len(images))
    images, labels = images[order], labels[order]
    held_out, held_out_labels = to_unit_range(images[4000:]), labels[4000:]
    train_images = to_unit_range(images[:4000])

    classifier, trunk = classifier_trunk(
        os.path.join(args.cache_dir, "mnist_classifier.keras"), held_out, held_out_labels
    )
    accuracy = float(np.mean(np.argmax(classifier.predict(train_images, verbose=0), -1)
                             == labels[:4000]))
    extractor = FeatureExtractor(trunk, batch_size=250)
    stats = load_or_compute_statistics(
        os.path.join(args.cache_dir, "mnist_classifier_stats.npz"), held_out, extractor
    )

    # Samples (label-balanced for a class-conditional model).
    start = time.time()
    kwargs = dict(num_images=args.num_images, seed=args.seed, sampler=args.sampler,
                  num_steps=args.num_steps, verbose=0)
    if getattr(model, "num_classes", None):
        kwargs["labels"] = np.arange(args.num_images) % model.num_classes
        kwargs["guidance_scale"] = args.guidance
    samples = np.asarray(model.generate(**kwargs))
    sample_seconds = time.time() - start
    samples = center_crop(samples, 28)

    fid = FID(feature_extractor=extractor, real_statistics=stats)
    fid.update_state(generated_images=samples)
    kid = KID(feature_extractor=extractor, real_statistics=stats,
              subset_size=min(1000, args.num_images))
    kid.update_state(generated_images=samples)
    floor = FID(feature_extractor=extractor, real_statistics=stats)  # Real vs real.
    floor.update_state(generated_images=train_images[: args.num_images])

    # Bits per dimension on held-out digits, padded like the training data.
    data = pad_or_resize(images[4000 : 4000 + args.elbo_images], model.image_shape[0])
    data = to_unit_range(data)
    guidance = {"guidance_scale": 0.0} if getattr(model, "num_classes", None) else {}
    model_fn = model.model_fn(**guidance)
    start = time.time()
    bpd = likelihood.elbo_bits_per_dim(
        model_fn, data, schedule=model.schedule, prediction=model.prediction,
        num_steps=model.schedule.num_train_timesteps or 1000,
    )
    elbo_seconds = time.time() - start
    result = {
        "model": args.model,
        "feature_extractor": "CNN classifier penultimate layer (128), trained on held-out digits",
        "classifier_accuracy_on_train_digits": accuracy,
        "num_generated": args.num_images,
        "sampler": args.sampler,
        "num_steps": args.num_steps,
        "guidance_scale": kwargs.get("guidance_scale"),
        "fid": float(fid.result()),
        "kid": float(kid.result()),
        "kid_std": kid.result_std(),
        "fid_real_train_vs_held_out": float(floor.result()),
        "elbo_bits_per_dim": bpd,
        "elbo_images": args.elbo_images,
        "image_shape": list(model.image_shape),
        "sample_seconds": round(sample_seconds, 1),
        "elbo_seconds": round(elbo_seconds, 1),
    }
    if args.ode:
        result["ode_bits_per_dim"] = likelihood.ode_bits_per_dim(
            model_fn, data, schedule=model.schedule, prediction=model.prediction,
            dequantize=True, rtol=1e-4, atol=1e-4,
        )
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.out, "eval_mnist.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "# MNIST model: FID, KID, bits per dimension",
        "",
        f"Model `{args.model}`; {args.num_images} samples ({args.sampler}, {args.num_steps} "
        f"steps); features: {result['feature_extractor']} (accuracy on the 4,000 training "
        f"digits {accuracy:.3f}).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FID (classifier features) | {result['fid']:.3f} |",
        f"| FID floor: real train vs held-out digits | {result['fid_real_train_vs_held_out']:.3f} |",
        f"| KID (classifier features) | {result['kid']:.4f} +- {result['kid_std']:.4f} |",
        f"| ELBO bits/dim ({args.elbo_images} held-out digits, {model.image_shape[0]}x"
        f"{model.image_shape[1]}) | {bpd:.3f} |",
    ]
    if args.ode:
        lines.append(f"| ODE bits/dim (dequantized) | {result['ode_bits_per_dim']:.3f} |")
    with open(os.path.join(args.out, "eval_mnist.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
