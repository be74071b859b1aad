"""keras_diffusion.models: the denoisers, the VAE, the text conditioner and
the model classes that train and sample them."""

from keras_diffusion.models.codecs import PixelCodec
from keras_diffusion.models.codecs import VAECodec
from keras_diffusion.models.consistency_model import ConsistencyModel
from keras_diffusion.models.consistency_parameterization import ConsistencyParameterization
from keras_diffusion.models.control_net import ControlNet
from keras_diffusion.models.controlled_unet import ControlledUNet
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.dit import DiT
from keras_diffusion.models.edm_preconditioning import EDMPreconditioning
from keras_diffusion.models.latent_consistency_model import LatentConsistencyModel
from keras_diffusion.models.latent_diffusion_model import LatentDiffusionModel
from keras_diffusion.models.masked_diffusion_model import MaskedDiffusionLM
from keras_diffusion.models.mlp_denoiser import MLPDenoiser
from keras_diffusion.models.mmdit import MMDiT
from keras_diffusion.models.noisy_classifier import NoisyClassifier
from keras_diffusion.models.progressive_distillation import ProgressiveDistillationModel
from keras_diffusion.models.reflow import ReflowModel
from keras_diffusion.models.text_conditioner import TextConditioner
from keras_diffusion.models.token_transformer import TokenTransformer
from keras_diffusion.models.unet import UNet
from keras_diffusion.models.vae import VAE
