"""keras_diffusion.data."""
