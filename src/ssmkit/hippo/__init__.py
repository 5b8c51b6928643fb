"""HiPPO: continuous-time memory by projection onto orthogonal polynomials (Gu et al. 2020)."""
from .basis import basis, laguerre, legendre
from .discretize import METHODS, discretize
from .legs import legs_matvec, legs_scan, legs_solve, legs_solve_ref, legs_step, legs_step_dense
from .measures import MEASURES, transition
from .memory import HiPPO
from .nplr import NPLR, low_rank_correction, nplr
