"""Inference: ensembles with TTA, predict, evaluate, scoring and export."""
