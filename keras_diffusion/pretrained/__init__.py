"""keras_diffusion.pretrained."""
from keras_diffusion.pretrained import stable_diffusion
from keras_diffusion.pretrained import stable_diffusion_control_net
