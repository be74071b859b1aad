"""A holder that keeps an object out of Keras' tracking."""


class Untracked:
    """Holds `value` out of Keras' tracking: its variables are neither
    trained nor saved through the holder's owner (a student's teacher; the
    variables a `WeightAverage` reads, which belong to the networks)."""

    def __init__(self, value):
        self.value = value
