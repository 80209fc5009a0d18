"""Langevin samplers and the on-device replay buffer."""
from .langevin import SPACES, ChainDivergedError, ChainResult, LangevinSampler, frozen
from .replay import ReplayBuffer, reinit_probability

__all__ = ["LangevinSampler", "ChainResult", "ChainDivergedError", "SPACES", "frozen",
           "ReplayBuffer", "reinit_probability"]
