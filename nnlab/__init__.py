"""nnlab: neural-network layers with hand-written backward passes, verified against PyTorch."""

__version__ = "0.1.0"
