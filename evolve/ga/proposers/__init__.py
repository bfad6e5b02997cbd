"""Proposers: what refills the spans the variation operators rewrite (see `base`)."""

from evolve.ga.proposers.base import FillRequest, Proposer
from evolve.ga.proposers.causal import CausalProposer
from evolve.ga.proposers.mlm import MLMProposer
from evolve.ga.proposers.sampling import SamplingPolicy
from scoring.template import InputTemplate

__all__ = [
    "CausalProposer",
    "FillRequest",
    "InputTemplate",
    "MLMProposer",
    "Proposer",
    "SamplingPolicy",
]
