"""Validation of a synthetic table against real rows (a local artefact, never part of a release)."""
