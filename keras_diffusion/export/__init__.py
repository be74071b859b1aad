"""keras_diffusion.export."""
