"""keras_diffusion.models."""
from keras_diffusion.models.unet import UNet
from keras_diffusion.models.dit import DiT
from keras_diffusion.models.mlp_denoiser import MLPDenoiser
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.vae import VAE
from keras_diffusion.models.text_conditioner import TextConditioner
from keras_diffusion.models.latent_diffusion_model import LatentDiffusionModel
