"""Every denoiser goes through `TestCase.run_denoiser_test`: the dict
contract, the null label, float32 under mixed precision, LoRA and saving.
(The Stable Diffusion bridge's denoiser: tests/pretrained, on the full network.)"""

import pytest

from keras_diffusion.models import DiT
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase


@pytest.mark.jax
class DenoiserContractTest(TestCase):
    def test_unet(self):
        self.run_denoiser_test(
            UNet,
            dict(input_channels=3, base_channels=8, channel_multipliers=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), num_groups=4,
                 num_classes=3, context_dim=6, condition_channels=2, head_channels=8),
            x_shape=(2, 8, 8, 3), context_shape=(2, 5, 6), condition_channels=2,
        )

    def test_dit(self):
        self.run_denoiser_test(
            DiT,
            dict(input_channels=2, patch_size=2, hidden_dim=16, depth=1, num_heads=2,
                 num_classes=4),
            x_shape=(2, 8, 8, 2),
        )

    def test_mlp_denoiser(self):
        self.run_denoiser_test(
            MLPDenoiser, dict(data_dim=3, hidden_dim=16, num_layers=1, num_classes=2),
            x_shape=(4, 3), lora_target="all",
        )
