"""DreamBooth helpers: a new label, the prior-preservation data, fine-tuning."""

import keras
import numpy as np

import keras_diffusion
from keras_diffusion.models import UNet
from keras_diffusion.models import dreambooth
from keras_diffusion.testing import TestCase


class DreamBoothTest(TestCase):
    def test_new_label_keeps_the_base_then_fine_tunes_with_prior_preservation(self):
        unet = UNet(input_channels=1, base_channels=8, channel_multipliers=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), num_groups=4, num_classes=3)
        base = keras_diffusion.DiffusionModel(unet, image_shape=(8, 8, 1), seed=0)
        base.build()
        tuned = dreambooth.add_label(base, init_from=1)
        self.assertEqual((tuned.num_classes, tuned.null_label), (4, 4))
        sample = dict(labels=[0, 1, 2], sampler="ddim", num_steps=2, seed=0,
                      guidance_scale=2.0, verbose=0)
        self.assertAllClose(tuned.generate(**sample), base.generate(**sample), atol=0, rtol=0)
        new = tuned.generate(**{**sample, "labels": [3, 3, 3]})
        self.assertAllClose(new, base.generate(**{**sample, "labels": [1, 1, 1]}), atol=1e-6)

        class_images = dreambooth.generate_class_images(base, 1, 6, sampler="ddim",
                                                        num_steps=2, seed=1)
        subject = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype("uint8")
        data = dreambooth.prior_preservation_data(subject, 3, class_images, 1,
                                                  prior_loss_weight=0.5, repeats=4)
        self.assertEqual(data["images"].shape, (12, 8, 8, 1))
        self.assertEqual(np.bincount(data["labels"]).tolist(), [0, 4, 0, 8])
        self.assertLessEqual(np.abs(data["images"]).max(), 1.0)
        # A prior over several classes: one label per class image.
        several = dreambooth.prior_preservation_data(subject, 3, class_images, [0, 0, 1, 1, 2, 2],
                                                     prior_loss_weight=2.0, repeats=2)
        self.assertEqual(np.bincount(several["labels"]).tolist(), [4, 2, 2, 4])
        tuned.denoiser.enable_lora(2)  # LoRA fine-tuning: only the LoRA weights train.
        frozen = [keras.ops.convert_to_numpy(v) for v in tuned.denoiser.non_trainable_weights]
        history = tuned.fit(data, batch_size=12, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        for v, before in zip(tuned.denoiser.non_trainable_weights, frozen):
            self.assertAllClose(v, before, atol=0, rtol=0)

    def test_bad_input(self):
        subject = np.zeros((2, 8, 8, 1), "float32")
        with self.assertRaisesWithArgument(ValueError, "prior_preservation", "class_images",
                                           "None"):
            dreambooth.prior_preservation_data(subject, 3)
        with self.assertRaisesWithArgument(ValueError, "class_images", "(4, 4, 1)"):
            dreambooth.prior_preservation_data(subject, 3, np.zeros((2, 4, 4, 1)), 1)
        with self.assertRaisesWithArgument(ValueError, "class_label", "2", "(3,)"):
            dreambooth.prior_preservation_data(subject, 3, subject, [0, 1, 2])
        with self.assertRaisesWithArgument(ValueError, "prior_loss_weight", "0"):
            dreambooth.prior_preservation_data(subject, 3, subject, 1, prior_loss_weight=0)
        data = dreambooth.prior_preservation_data(subject, 3, prior_preservation=False,
                                                  repeats=3)
        self.assertEqual(data["labels"].tolist(), [3] * 6)
        unconditional = keras_diffusion.DiffusionModel(image_shape=(8, 8, 1))
        with self.assertRaisesWithArgument(ValueError, "class-conditional", "num_classes=None"):
            dreambooth.add_label(unconditional)
