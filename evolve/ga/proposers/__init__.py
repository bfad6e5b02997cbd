"""Proposers: what refills the spans the variation operators rewrite (see `base`)."""

from evolve.ga.proposers.base import FillRequest, InputTemplate, Proposer
from evolve.ga.proposers.causal import CausalProposer
from evolve.ga.proposers.mlm import MLMProposer

__all__ = ["CausalProposer", "FillRequest", "InputTemplate", "MLMProposer", "Proposer"]
