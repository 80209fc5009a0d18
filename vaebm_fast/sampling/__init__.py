"""Langevin samplers and the on-device replay buffer."""
from .fast import FastSampler
from .langevin import (SPACES, ChainDivergedError, ChainResult, LangevinSampler,
                       ReparameterizedGenerator, frozen)
from .prepare import prepare_for_sampling
from .replay import ReplayBuffer, reinit_probability

__all__ = ["LangevinSampler", "FastSampler", "prepare_for_sampling", "ReparameterizedGenerator",
           "ChainResult", "ChainDivergedError", "SPACES", "frozen", "ReplayBuffer",
           "reinit_probability"]
