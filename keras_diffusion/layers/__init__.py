"""keras_diffusion.layers."""
