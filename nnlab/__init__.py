"""nnlab: neural-network layers with hand-written backward passes, verified against PyTorch.

The top level holds the whole-model tools: ``summary(model, input_shape)`` (every
layer's output shape and parameter count), ``save(model, path)`` and ``load(path)``
(architecture and weights in one file). They are imported on first use, so that
``import nnlab`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"summary": "._summary", "Summary": "._summary", "save": ".serialization", "load": ".serialization"}

__all__ = ["load", "save", "summary", "Summary"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'nnlab' has no attribute '{name}'")
