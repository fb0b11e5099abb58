"""Experiments on live customers: reviewed definitions, deterministic frozen arm assignment, split checks."""
