"""The genetic algorithm: individuals, proposers, operators, evaluation, the loop.

Imports `scoring` only; the store and the experiments are built on top of it.
"""
