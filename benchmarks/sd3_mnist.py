"""The SD3 recipe (training/configs/sd3_mnist.py) on latent MNIST with captions.

1. A factor-4 VAE (32x32 digits -> 8x8x4 latents), trained for
   `--vae_seconds` on the 4,000 diffusion digits and saved as .keras
   (`--vae_only` stops here: the VAE the config's `model.vae` needs).
2. The config through the training loop (`training.lib.experiment`, what
   `training/train.py` runs) for `--steps` steps, once with the MMDiT (joint
   attention) and once with a DiT of about the same parameter count that
   cross-attends to the same TextConditioner context.
3. Prompt accuracy: the judge of benchmarks/mnist.py (a CNN trained on the
   1,000 digits never used for diffusion) reads `--per_class` samples per
   digit prompted with a training phrasing ("a handwritten seven") and with
   an unseen one ("the handwritten number seven": known words, a phrasing
   absent from data.mnist.CAPTION_TEMPLATES).

    nice -n 10 python benchmarks/sd3_mnist.py --smoke   # 2 steps, sample, export (~3 min)
    nice -n 10 python benchmarks/sd3_mnist.py --vae_only --vae_out /tmp/mnist_vae.keras
    nice -n 10 python benchmarks/sd3_mnist.py --vae /tmp/mnist_vae.keras --steps 1500

Writes benchmarks/results/sd3_mnist.{json,md} and sd3_mnist_<denoiser>.png
(a row per prompted digit).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist import TimeBudget  # noqa: E402
from mnist import classifier  # noqa: E402
from mnist import load_digits  # noqa: E402

from keras_diffusion.data.mnist import DIGIT_NAMES  # noqa: E402
from keras_diffusion.models import VAE  # noqa: E402
from training.configs import sd3_mnist  # noqa: E402
from training.lib.experiment import Experiment  # noqa: E402

TRAIN_PHRASING = "a handwritten {name}"
UNSEEN_PHRASING = "the handwritten number {name}"
# A DiT with cross-attention of about the MMDiT's parameter count (printed).
DIT_KWARGS = {"patch_size": 2, "hidden_dim": 128, "depth": 3, "num_heads": 2}


def pad(x):
    x = x.astype("float32") / 127.5 - 1.0
    return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)


def train_vae(x_train, seconds, path):
    vae = VAE(input_channels=1, latent_channels=4, base_channels=16,
              channel_multipliers=(1, 2, 2), num_res_blocks=1, num_groups=8,
              mid_attention=False, kl_weight=1e-6, seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    vae.fit(x_train, batch_size=64, epochs=1000, verbose=0, callbacks=[TimeBudget(seconds)])
    vae.estimate_scaling_factor(x_train[:1000], batch_size=250)
    vae.save(path)
    return vae


def smoke(workdir):
    """The config with tiny overrides (an untrained VAE, 2 steps): train,
    sample from the prompts, export, and check the SavedModel's text input.
    (Too slow for the CI test budget: ~75 CPU-seconds.)"""
    import tensorflow as tf

    import keras_diffusion

    config = sd3_mnist.get_config()
    config.data.image_size = 16
    config.data.batch_size = 4
    config.data.shuffle_buffer = 8
    config.model.vae = "new"
    config.model.vae_kwargs = {"latent_channels": 4, "base_channels": 8,
                               "channel_multipliers": (1, 2), "num_res_blocks": 1,
                               "num_groups": 4, "mid_attention": False}
    config.model.text_encoder_kwargs = {"sequence_length": 6, "embedding_dim": 8,
                                        "num_layers": 1, "num_heads": 2}
    config.model.denoiser_kwargs = {"patch_size": 2, "hidden_dim": 16, "depth": 2,
                                    "num_heads": 2}
    config.optim.warmup_steps = 0
    config.train.num_steps = config.train.checkpoint_every = 2
    config.train.log_every = 1
    config.train.sample_every = 0
    config.train.jit_compile = "false"
    config.sample.num_images = config.sample.batch_size = 2
    config.sample.num_steps = 2
    experiment = Experiment.create(config, workdir, "train")
    experiment.train()
    model = experiment.model
    assert isinstance(model, keras_diffusion.LatentDiffusionModel)
    assert isinstance(model.denoiser, keras_diffusion.models.MMDiT)
    assert model.denoiser.context_dim == 8
    assert "seven" in model.text_encoder.get_vocabulary()
    images = experiment.sample()
    assert images.shape == (2, 16, 16, 1) and np.all(np.isfinite(images))
    served = tf.saved_model.load(experiment.export())
    inputs = served.signatures["serving_default"].structured_input_signature[1]
    assert "text" in inputs, inputs
    print("smoke: trained 2 steps, sampled", images.shape, "from prompts, exported with",
          sorted(inputs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--vae", default="", help="a trained .keras VAE (else one is trained)")
    parser.add_argument("--vae_only", action="store_true")
    parser.add_argument("--vae_out", default=os.path.join(tempfile.gettempdir(), "mnist_vae.keras"))
    parser.add_argument("--vae_seconds", type=float, default=150)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--denoisers", default="mmdit,dit")
    parser.add_argument("--per_class", type=int, default=10)
    parser.add_argument("--classifier_epochs", type=int, default=30)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sd3_mnist"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    if args.smoke:
        return smoke(tempfile.mkdtemp())
    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    start = time.time()
    if args.vae:
        vae_path = args.vae
    else:
        train_vae(pad(x[:4000]), args.vae_seconds, args.vae_out)
        vae_path = args.vae_out
        print(f"VAE trained in {time.time() - start:.0f} s -> {vae_path}", flush=True)
    if args.vae_only:
        return

    clf, _ = classifier()
    clf.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    clf.fit(x[4000:] / 127.5 - 1, y[4000:], batch_size=64, epochs=args.classifier_epochs,
            verbose=0)
    wanted = np.repeat(np.arange(10), args.per_class)
    results = {}
    for denoiser in args.denoisers.split(","):
        config = sd3_mnist.get_config()
        config.model.vae = vae_path
        config.model.denoiser = denoiser
        if denoiser == "dit":
            config.model.denoiser_kwargs = dict(DIT_KWARGS)
        config.train.num_steps = args.steps
        config.train.checkpoint_every = args.steps
        config.train.sample_every = 0
        config.optim.warmup_steps = min(config.optim.warmup_steps, args.steps // 5)
        workdir = os.path.join(args.workdir, denoiser)
        experiment = Experiment.create(config, workdir, "train")
        start = time.time()
        experiment.train()
        seconds = time.time() - start
        model = experiment.model
        row = {"denoiser_parameters": int(model.denoiser.count_params()),
               "text_encoder_parameters": int(model.text_encoder.count_params()),
               "steps": args.steps, "train_seconds": round(seconds, 1),
               "denoiser_config": dict(config.model.denoiser_kwargs)}
        for key, phrasing in (("training_phrasing", TRAIN_PHRASING),
                              ("unseen_phrasing", UNSEEN_PHRASING)):
            prompts = [phrasing.format(name=DIGIT_NAMES[c]) for c in wanted]
            images = model.generate(text=prompts, sampler=config.sample.sampler,
                                    num_steps=config.sample.num_steps,
                                    guidance_scale=config.sample.guidance_scale, seed=0,
                                    batch_size=50, verbose=0)
            predicted = np.argmax(clf.predict(images[:, 2:30, 2:30], verbose=0), -1)
            row[key] = {"phrasing": phrasing, "accuracy": float(np.mean(predicted == wanted))}
            if key == "training_phrasing":
                from keras_diffusion.utils.images import save_image_grid

                save_image_grid(images, os.path.join(args.out, f"sd3_mnist_{denoiser}.png"),
                                num_rows=10)
        results[denoiser] = row
        print(denoiser, json.dumps(row), flush=True)
        with open(os.path.join(args.out, "sd3_mnist.json"), "w") as f:
            json.dump({"command": "python benchmarks/sd3_mnist.py " + " ".join(sys.argv[1:]),
                       "config": "training/configs/sd3_mnist.py", "runs": results,
                       "load_average_1min": os.getloadavg()[0]}, f, indent=2)
    lines = ["# SD3 recipe on latent MNIST with captions (CPU)", "",
             "training/configs/sd3_mnist.py through the training loop: VAE latents 8x8x4, "
             "TextConditioner, rectified flow (shift 1 at the base resolution), logit-normal "
             "times, flow prediction, 10% caption dropout, CFG 3, Euler 20 steps. Judge: "
             "benchmarks/mnist.py's CNN (chance 0.1).", "",
             "| denoiser | params | steps | train s | acc, training phrasing | acc, unseen |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['denoiser_parameters']:,} | {r['steps']} | "
                     f"{r['train_seconds']:.0f} | {r['training_phrasing']['accuracy']:.2f} | "
                     f"{r['unseen_phrasing']['accuracy']:.2f} |")
    lines.append(f"\nPhrasings: \"{TRAIN_PHRASING}\" (trained) and \"{UNSEEN_PHRASING}\" "
                 "(unseen). Samples: sd3_mnist_<denoiser>.png.")
    with open(os.path.join(args.out, "sd3_mnist.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
