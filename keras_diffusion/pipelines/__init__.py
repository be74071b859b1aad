"""keras_diffusion.pipelines: the generation runner, img2img and inpainting.

`GenerationRunner` turns noise into samples for a denoiser given as a
function (with guidance, any sampler and a codec's decode); `img2img` and
`inpaint` edit images with any model function and sampler. They work on
protocols and never import `keras_diffusion.models`.
"""

from keras_diffusion.pipelines.generation_runner import GenerationRunner
from keras_diffusion.pipelines.image_to_image import check_mask
from keras_diffusion.pipelines.image_to_image import check_strength
from keras_diffusion.pipelines.image_to_image import img2img
from keras_diffusion.pipelines.image_to_image import inpaint
from keras_diffusion.pipelines.image_to_image import inpainting_condition
from keras_diffusion.pipelines.image_to_image import resize_to
from keras_diffusion.pipelines.image_to_image import strength_timesteps
from keras_diffusion.pipelines.image_to_image import upsample_condition
