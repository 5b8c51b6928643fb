"""HiPPO: continuous-time memory by projection onto orthogonal polynomials."""
