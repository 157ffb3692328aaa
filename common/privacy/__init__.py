"""Differential privacy: DP-SGD, noisy marginals, accounting and the ledger, random streams."""
