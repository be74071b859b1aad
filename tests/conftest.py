import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tests are tiny, so their time goes into compiling, not running:
# - XLA (the JAX backend, and the XLA islands of `layers/fusion.py` on
#   TensorFlow): LLVM's optimization passes cost far more than they save
#   (measured: a UNet layer test 1.7x faster on JAX; on TensorFlow, with
#   Grappler off as below, a layers + fit subset took 12% less CPU time).
#   Read when XLA starts, after this runs; subprocesses of the tests
#   inherit it.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
)

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    # - Grappler: each tf.function is called once or twice on tiny tensors,
    #   so its graph rewrites at each first call cost more than they save
    #   (measured alone: about 3% less CPU time on that subset). The tests
    #   that run the library in a subprocess (the CLI, fresh-process loads)
    #   keep it.
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


# Seconds each test file took (its tests' setup + call + teardown, summed),
# per backend, from a run with `--durations=0` (`tests/update_durations.py`
# writes them). Only the order of the run depends on them; a file missing
# here counts as DEFAULT_SECONDS.
DURATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
DEFAULT_SECONDS = 20


def pytest_collection_modifyitems(config, items):
    """The slowest files first. Under `-n 2 --dist loadfile` files are
    handed out in collection order, so the run then ends on short files
    rather than on one process finishing a long one while the other waits.
    (Stable: a file's tests keep their order.)"""
    import json

    seconds = {}
    if os.path.exists(DURATIONS):
        with open(DURATIONS) as f:
            seconds = json.load(f).get(os.environ.get("KERAS_BACKEND", "tensorflow"), {})
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], DEFAULT_SECONDS))
