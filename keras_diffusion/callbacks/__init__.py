"""keras_diffusion.callbacks."""
