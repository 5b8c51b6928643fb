"""ssmkit: state-space sequence models from HiPPO to Mamba in one PyTorch library."""
__version__ = "0.1.0"

from . import hippo, kernels, layers, ops
from .layers import available_layers, get_layer
