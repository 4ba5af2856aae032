"""Deterministic hypothesis for CI: a fixed seed, no deadline (shared machines are noisy)."""

from hypothesis import settings

settings.register_profile("nnlab", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.load_profile("nnlab")
