"""Package-level contracts: imports without TensorFlow on JAX, public names."""

import os
import subprocess
import sys
import textwrap

import pytest

import keras_diffusion


@pytest.mark.jax
def test_imports_on_jax_without_tensorflow():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_probability", "keras_cv"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import keras_diffusion
        from keras_diffusion import samplers, schedules, objectives, guidance, testing
        import keras
        assert keras.backend.backend() == "jax", keras.backend.backend()
        print("ok")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


@pytest.mark.jax
def test_public_names():
    from keras_diffusion import samplers
    from keras_diffusion import schedules

    for name in (
        "LinearSchedule",
        "ScaledLinearSchedule",
        "CosineSchedule",
        "VESchedule",
        "RectifiedFlowSchedule",
        "get",
    ):
        assert hasattr(schedules, name), name
    for name in ("DDIMSampler", "get"):
        assert hasattr(samplers, name), name
    assert keras_diffusion.__version__
