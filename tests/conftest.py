"""Deterministic hypothesis for CI (a fixed seed, no deadline on shared machines), and
one torch thread: the tests use small tensors, where thread start-up costs more than it
saves and competing threads slow a 2-core machine several-fold."""

import torch
from hypothesis import settings

settings.register_profile("nnlab", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.load_profile("nnlab")

torch.set_num_threads(1)
