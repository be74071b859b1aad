import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if os.environ.get("KERAS_BACKEND") == "jax":
    # The JAX run's time is mostly XLA compiling each eager op and each
    # sampler loop for the CPU: tests are tiny, so LLVM's optimization passes
    # cost far more than they save (measured: a UNet layer test 1.7x faster).
    # Read when JAX starts its CPU backend, after this runs.
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
    )
