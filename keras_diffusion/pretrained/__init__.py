"""keras_diffusion.pretrained."""
