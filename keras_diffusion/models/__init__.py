"""keras_diffusion.models."""
from keras_diffusion.models.unet import UNet
from keras_diffusion.models.dit import DiT
from keras_diffusion.models.vae import VAE
