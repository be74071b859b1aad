"""A frozen UNet steered by one or more ControlNets."""

import numbers

import keras
from keras import ops

from keras_diffusion.models.control_net import ControlNet
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.unet import UNet


def check_conditioning_scale(conditioning_scale, num):
    """`conditioning_scale` as a list of `num` floats >= 0, else a ValueError."""
    scales = conditioning_scale
    if isinstance(scales, numbers.Number) and not isinstance(scales, bool):
        scales = [scales] * num
    if not isinstance(scales, (list, tuple)) or len(scales) != num or any(
        isinstance(s, bool) or not isinstance(s, numbers.Number) for s in scales
    ):
        raise ValueError(
            f"`conditioning_scale` must be a number or a list of {num} numbers (one "
            f"per ControlNet), received conditioning_scale={conditioning_scale!r}"
        )
    for s in scales:
        if not float(s) >= 0 or float(s) == float("inf"):
            raise ValueError(
                "`conditioning_scale` must be finite and >= 0, received "
                f"conditioning_scale={conditioning_scale!r}"
            )
    return [float(s) for s in scales]


def _is_control_net(net):
    """A ControlNet: a model with the protocol of the library's `ControlNet`
    (the SD bridge's `StableDiffusionControlNet` has it too)."""
    return isinstance(net, keras.Model) and all(
        hasattr(net, a) for a in ("control_channels", "hint_downsampling", "copy_encoder_from")
    )


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ControlledUNet(Denoiser):
    """A denoiser: a frozen UNet plus ControlNets (Zhang et al., 2023).

    Each ControlNet sees x_t, t, the conditions and its slice of the
    `"control"` input (the control images of all ControlNets concatenated
    on channels, in order) and returns residuals for the base's skip
    connections and middle block; they are scaled by `conditioning_scale`,
    summed over the ControlNets (Multi-ControlNet) and added inside the
    frozen base. The base is frozen (`trainable = False`), so
    `DiffusionModel(ControlledUNet(base)).fit(...)` on batches
    `{"images", "control", "labels" or "text"}` trains only the ControlNets;
    the condition dropout of the `DiffusionModel` drops the labels / prompt
    but keeps the control (`conditioning.KEPT_KEYS`). A ControlNet that is
    not built yet gets the base's encoder weights when the model is built,
    and its zero convolutions make the output exactly the base's.

    The base is the library's `UNet` (with `ControlNet`s) or the Stable
    Diffusion bridge's `StableDiffusionDenoiser` (with
    `StableDiffusionControlNet`s, from `unet.control_net(...)`): any
    denoiser whose `call` takes `residuals=` (`accepts_residuals`), with
    ControlNets that have `control_channels`, `hint_downsampling` and
    `copy_encoder_from(base)`.

    Inputs: the base UNet's dict plus `"control"` `(B, H * f, W * f,
    control_channels)`, f = `hint_downsampling`. Output: the base's.

    Args:
        unet: the base `UNet` or `StableDiffusionDenoiser` (trained;
            frozen here).
        control_nets: a ControlNet or a list of them; None makes one:
            `ControlNet.from_unet(unet, control_channels, ...)` for a
            `UNet`, `unet.control_net(control_channels, ...)` for the bridge.
        conditioning_scale: a float >= 0, or one per ControlNet.
        control_channels: channels of the control image (when
            `control_nets` is None).
        hint_downsampling: control size / x_t size (when `control_nets` is
            None); None: 1 for a `UNet`, 8 for the bridge (the control
            image has the pixel size of SD's images).
        **kwargs: `keras.Model` arguments.

    Example:
    >>> base = keras.models.load_model("mnist.keras")
    >>> model = keras_diffusion.DiffusionModel(
    ...     ControlledUNet(base.denoiser, control_channels=1), num_classes=10)
    >>> model.fit(tf.data.Dataset.from_tensor_slices(
    ...     {"images": x, "control": edges, "labels": y}).batch(64))
    >>> model.generate(labels=[3, 7], control=edges[:2])

    References:
        Zhang et al., Adding Conditional Control to Text-to-Image Diffusion
        Models, 2023.
    """

    def __init__(self, unet, control_nets=None, conditioning_scale=1.0, control_channels=3,
                 hint_downsampling=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(unet, Denoiser) or not unet.accepts_residuals:
            raise ValueError(
                "`unet` must be a keras_diffusion UNet or a StableDiffusionDenoiser (a "
                f"denoiser that takes ControlNet residuals), received {type(unet).__name__}"
            )
        if control_nets is None:
            options = dict(control_channels=control_channels, name="control_net")
            if hint_downsampling is not None:
                options["hint_downsampling"] = hint_downsampling
            if isinstance(unet, UNet):
                control_nets = [ControlNet.from_unet(unet, **options)]
            else:
                control_nets = [unet.control_net(**options)]
        elif not isinstance(control_nets, (list, tuple)):
            control_nets = [control_nets]
        control_nets = list(control_nets)
        if not control_nets or not all(_is_control_net(n) for n in control_nets):
            raise ValueError(
                "`control_nets` must be a ControlNet or a non-empty list of them, received "
                f"{[type(n).__name__ for n in control_nets]}"
            )
        factors = {n.hint_downsampling for n in control_nets}
        if len(factors) != 1:
            raise ValueError(
                f"The ControlNets have different hint_downsampling values {sorted(factors)}"
            )
        self.conditioning_scale = check_conditioning_scale(conditioning_scale, len(control_nets))
        self.unet = unet
        self._freeze_base()
        self.control_nets = control_nets
        self.input_channels = unet.input_channels
        self.output_channels = getattr(unet, "output_channels", unet.input_channels)
        self.num_classes = unet.num_classes
        self.context_dim = unet.context_dim
        self.condition_channels = unet.condition_channels
        self.control_channels = sum(n.control_channels for n in control_nets)
        self.hint_downsampling = factors.pop()

    def _freeze_base(self):
        # `trainable = False` on the layer, and on each variable: the setter
        # does not reach every variable of a built subclassed model.
        self.unet.trainable = False
        for v in self.unet.variables:
            v.trainable = False

    def _divisor(self):
        return self.unet._divisor()

    def control_shape_for(self, image_shape):
        """The control image's shape (without batch) for x_t of `image_shape`."""
        f = self.hint_downsampling
        return (int(image_shape[0]) * f, int(image_shape[1]) * f, self.control_channels)

    def build(self, input_shape):
        self._check_input_shapes(input_shape, *self._divisor())
        base_shape = {k: v for k, v in input_shape.items() if k != "control"}
        if not self.unet.built:
            self.unet.build(base_shape)
        self._freeze_base()
        control = tuple(input_shape["control"])
        for net in self.control_nets:
            if not net.built:
                net.build({**base_shape, "control": control[:-1] + (net.control_channels,)})
                net.copy_encoder_from(self.unet)
        self.built = True

    def call(self, inputs, training=None):
        self.check_inputs(inputs)
        base_inputs = {k: v for k, v in inputs.items() if k != "control"}
        control = ops.cast(inputs["control"], "float32")
        residuals, start = None, 0
        for net, scale in zip(self.control_nets, self.conditioning_scale):
            stop = start + net.control_channels
            out = net({**base_inputs, "control": control[..., start:stop]}, training=training)
            out = [scale * r for r in out]
            residuals = out if residuals is None else [a + b for a, b in zip(residuals, out)]
            start = stop
        return self.unet(base_inputs, training=False, residuals=residuals)

    def compute_output_shape(self, input_shape):
        return self.unet.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "unet": keras.saving.serialize_keras_object(self.unet),
            "control_nets": [keras.saving.serialize_keras_object(n) for n in self.control_nets],
            "conditioning_scale": list(self.conditioning_scale),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["unet"] = keras.saving.deserialize_keras_object(config["unet"])
        config["control_nets"] = [
            keras.saving.deserialize_keras_object(n) for n in config["control_nets"]
        ]
        return cls(**config)
