"""The machine a benchmark ran on, as its results record it."""

import os
import platform


def machine():
    """Platform, processor, CPU count and the devices TensorFlow sees."""
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }
