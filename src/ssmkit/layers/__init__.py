"""Sequence layers, one module per family; all keep the SequenceLayer protocol (layers/base.py)."""
from .base import (
    SequenceLayer,
    available_layers,
    get_layer,
    get_optim_hints,
    register_layer,
    run_steps,
    set_optim_hints,
)
from .lti_base import LTILayer
from .mamba import Mamba
from .mamba2 import Mamba2
from .rtf import RTF
from .s4 import S4
from .s4d import S4D
from .s5 import S5
