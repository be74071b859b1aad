"""keras_diffusion.models."""
