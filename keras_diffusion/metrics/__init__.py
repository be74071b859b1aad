"""keras_diffusion.metrics."""
