"""keras_diffusion.layers: the blocks the denoisers are built from."""

from keras_diffusion.layers.attention_block import AttentionBlock
from keras_diffusion.layers.dit_block import DiTBlock
from keras_diffusion.layers.dit_final_layer import DiTFinalLayer
from keras_diffusion.layers.downsample import Downsample
from keras_diffusion.layers.group_normalization import GroupNormalization
from keras_diffusion.layers.hint_encoder import HintEncoder
from keras_diffusion.layers.mmdit_block import MMDiTBlock
from keras_diffusion.layers.patch_embedding import PatchEmbedding
from keras_diffusion.layers.resnet_block import ResnetBlock
from keras_diffusion.layers.timestep_embedding import TimestepEmbedding
from keras_diffusion.layers.upsample import Upsample
