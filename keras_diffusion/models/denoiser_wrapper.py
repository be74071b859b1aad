"""The base of denoisers that wrap another one with time-dependent scalings."""

import keras

from keras_diffusion import schedules as schedules_lib
from keras_diffusion.models.denoiser import Denoiser


class DenoiserWrapper(Denoiser):
    """A denoiser around another, on a schedule, with a data scale `sigma_data`.

    The wrapped network defines the contract: its classes, context, image
    condition, data rank and input checks are the wrapper's. Subclasses
    (`EDMPreconditioning`, `ConsistencyParameterization`) write only their
    `call`: the scalings of the network's input and output.

    Args:
        denoiser: the wrapped `Denoiser` (or any network on the dict contract).
        schedule: a schedule or its name.
        sigma_data: the data's standard deviation (positive).
        **kwargs: `keras.Model` arguments.

    Example:

    ```python
    net = keras_diffusion.models.EDMPreconditioning(UNet(input_channels=1))
    ```
    """

    def __init__(self, denoiser, schedule, sigma_data, **kwargs):
        super().__init__(**kwargs)
        self.denoiser = denoiser
        self.schedule = schedules_lib.get(schedule)
        sigma_data = float(sigma_data)
        if not sigma_data > 0:
            raise ValueError(
                f"`sigma_data` must be positive, received sigma_data={sigma_data}"
            )
        self.sigma_data = sigma_data

    @property
    def num_classes(self):
        return getattr(self.denoiser, "num_classes", None)

    @property
    def null_label(self):
        return getattr(self.denoiser, "null_label", None)

    @property
    def context_dim(self):
        return getattr(self.denoiser, "context_dim", None)

    @property
    def condition_channels(self):
        return getattr(self.denoiser, "condition_channels", 0)

    @property
    def guidance_embedding(self):
        return getattr(self.denoiser, "guidance_embedding", False)

    @property
    def data_rank(self):
        return getattr(self.denoiser, "data_rank", 4)

    def check_inputs(self, inputs):
        """The wrapped denoiser's checks (it defines the contract's shapes)."""
        check = getattr(self.denoiser, "check_inputs", None)
        if check is not None:
            return check(inputs)
        return tuple(inputs["x_t"].shape)

    def _check_dict(self, inputs):
        if not isinstance(inputs, dict) or "x_t" not in inputs or "t" not in inputs:
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                f"{type(self).__name__} is called with a dict {{'x_t': ..., 't': ...}}, "
                f"received {keys}"
            )

    def build(self, input_shape):
        if not self.denoiser.built:
            self.denoiser.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape["x_t"])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "denoiser": keras.saving.serialize_keras_object(self.denoiser),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "sigma_data": self.sigma_data,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["denoiser"] = keras.saving.deserialize_keras_object(config["denoiser"])
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
