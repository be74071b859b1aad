"""Quiet TensorFlow, XLA, CUDA and oneDNN start-up logs (training/train.py).

Call `quiet_logs()` before TensorFlow is imported. It keeps what a user of
the training script reads: the progress bar, the step logs, warnings and
errors of the library and the script, and the paths it writes. It drops:

- TensorFlow's C++ INFO/WARNING lines (`TF_CPP_MIN_LOG_LEVEL=2`, unless set);
- the lines TensorFlow's C++ libraries print while they load, before
  `absl::InitializeLog()`, which no environment variable silences (oneDNN
  and CPU-feature notices, "Could not find cuda drivers", the cuInit error
  on a machine without a GPU): fd 2 goes through a small filter process
  that drops exactly those (glog-formatted lines of level I and W, and the
  E lines of the CUDA probes);
- the `tensorflow` Python logger's INFO and WARNING records (e.g. the
  SavedModel writer's "Function ... contains input name(s)" lines).

`--verbose_logs` skips all of it.
"""

import os
import subprocess
import sys

# The filter: the lines C++ libraries print before absl::InitializeLog()
# (dated "0000 00:00:", which absl's Python log lines never are) of level I
# or W, the pre-init banner, the CPU-feature line's continuation, and the
# CUDA probe errors of a machine without a GPU. Everything else passes.
_FILTER = r"""
import re, sys
glog = re.compile(rb"^[IW]0000 00:00:[\d.]+ +\d+ [\w./-]+:\d+\] ")
cuda = re.compile(rb"^E0000 00:00:.*(cuInit|cuda_|CUDA|cuDNN|cuFFT|cuBLAS|computation_placer)")
drop = (b"WARNING: All log messages before absl::InitializeLog()",
        b"To enable the following instructions:")
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if glog.match(line) or cuda.match(line) or line.startswith(drop):
        continue
    out.write(line)
    out.flush()
"""


def _drop_tensorflow_info(record):
    path = record.pathname.replace(os.sep, "/")
    return record.levelno >= 30 or "/tensorflow/" not in path


def quiet_logs(verbose=False):
    """Quiets the noise (see the module docstring); a no-op when `verbose`.

    Returns the filter process (or None).
    """
    if verbose:
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    from absl import logging as absl_logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # TensorFlow modules that log INFO through absl directly (e.g. the
    # checkpoint writer's "Sharding callback duration").
    absl_logging.get_absl_handler().addFilter(_drop_tensorflow_info)
    proc = None
    try:
        sys.stderr.flush()
        stderr = os.dup(2)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-u", "-c", _FILTER], stdin=subprocess.PIPE,
                stdout=stderr, close_fds=True,
            )
        finally:
            os.close(stderr)
        # fd 2 now writes into the filter; the filter writes to the original
        # stderr and ends when this process ends (even when killed).
        os.dup2(proc.stdin.fileno(), 2)
        proc.stdin.close()
    except OSError:  # No filter: the logs stay as they are.
        pass
    return proc
