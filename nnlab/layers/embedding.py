"""A lookup table of vectors indexed by integer ids (word or character embeddings)."""

import torch

from .base import Layer, checked_bool, checked_int, checked_real

__all__ = ["Embedding"]


class Embedding(Layer):
    """``out[...] = weight[ids[...]]``: each integer id picks a row of the (V, D) table.
    Same as ``torch.nn.Embedding``.

    Backward: ``dweight[v] += sum of dout over the positions where ids == v`` (one
    ``index_add_``), except the ``padding_idx`` row, which never gets a gradient; with
    ``scale_grad_by_freq=True`` each position's gradient is first divided by how often its
    id occurs in the batch. The ids are integers and have no gradient: backward returns
    None (``has_input_gradient = False``, so containers accept it).

    ``max_norm``: in forward, before the lookup, every row that the ids reference whose
    ``norm_type``-norm exceeds max_norm is rescaled in place to norm max_norm (scale
    max_norm / (norm + 1e-7)), as torch does. ``sparse=True`` is refused.
    ``Embedding.from_pretrained(table, freeze=True, ...)`` builds one from a table; a frozen
    table is a buffer (saved under ``weight``, never trained, not in ``params()``).

    Shapes: ids (*) of an integer dtype -> out (*, D).
    Parameters: ``weight`` (V, D) ~ N(0, 1), the padding row 0.
    Caches: the ids.

    Example::

        >>> import torch
        >>> from nnlab.layers import Embedding
        >>> embed = Embedding(10, 3)
        >>> ids = torch.tensor([[1, 2, 1]])
        >>> embed(ids).shape
        torch.Size([1, 3, 3])
        >>> embed.backward(torch.ones(1, 3, 3)) is None    # ids have no gradient
        True
        >>> embed.grad("weight")[:3]                 # row 1 was used twice
        tensor([[0., 0., 0.],
                [2., 2., 2.],
                [1., 1., 1.]])
    """

    SAVED_TENSORS = ("_ids",)
    has_input_gradient = False

    def __init__(
        self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
        sparse=False, _weight=None, _freeze=False, device=None, dtype=None,
    ):
        super().__init__()
        self.num_embeddings = checked_int("Embedding", "num_embeddings", num_embeddings, 0)
        self.embedding_dim = checked_int("Embedding", "embedding_dim", embedding_dim, 0)
        if padding_idx is not None:
            padding_idx = checked_int("Embedding", "padding_idx", padding_idx, -num_embeddings)
            if padding_idx >= num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}")
            padding_idx = padding_idx % num_embeddings
        self.padding_idx = padding_idx
        self.max_norm = None if max_norm is None else checked_real("Embedding", "max_norm", max_norm, 0.0)
        self.norm_type = checked_real("Embedding", "norm_type", norm_type)
        self.scale_grad_by_freq = checked_bool("Embedding", "scale_grad_by_freq", scale_grad_by_freq)
        if sparse:
            raise NotImplementedError("Embedding: sparse=True (sparse gradients) is not supported; use sparse=False")
        if _weight is None:
            weight = torch.randn(num_embeddings, embedding_dim)
            if padding_idx is not None:
                weight[padding_idx] = 0
        else:
            if not isinstance(_weight, torch.Tensor) or tuple(_weight.shape) != (num_embeddings, embedding_dim):
                got = tuple(_weight.shape) if isinstance(_weight, torch.Tensor) else type(_weight).__name__
                raise ValueError(f"Embedding: _weight must have shape {(num_embeddings, embedding_dim)}, got {got}")
            weight = _weight.clone()
        self.freeze = checked_bool("Embedding", "_freeze", _freeze)
        if self.freeze:
            self.add_buffer("weight", weight)
        else:
            self.add_param("weight", weight)
        self._ids = None
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls, embeddings, freeze=True, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
        sparse=False,
    ):
        """An Embedding holding a copy of the (V, D) table ``embeddings``, as torch's."""
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"Embedding.from_pretrained: expected a 2-D table (V, D), got {got}")
        rows, dim = embeddings.shape
        layer = cls(
            rows, dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight=embeddings, _freeze=freeze,
        )
        return layer

    def __repr__(self):
        options = ""
        if self.padding_idx is not None:
            options += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            options += f", max_norm={self.max_norm}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{options})"

    def forward(self, ids, **kw):
        self.check_input(ids, "(*) integer ids", lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise IndexError(
                f"{self!r}: ids must be in [0, {self.num_embeddings}), got values in "
                f"[{ids.min().item()}, {ids.max().item()}]"
            )
        if self.max_norm is not None:
            self.renormalize(ids)
        self._ids = ids
        return self.finish_forward(self.weight[ids])

    def renormalize(self, ids):
        """torch's embedding_renorm_: the referenced rows whose norm exceeds max_norm are
        scaled down in place (state, outside any autograd graph)."""
        with torch.no_grad():
            rows = torch.unique(ids.reshape(-1))
            norms = torch.linalg.vector_norm(self.weight[rows], ord=self.norm_type, dim=1)
            scale = torch.where(norms > self.max_norm, self.max_norm / (norms + 1e-7), torch.ones_like(norms))
            self.weight[rows] *= scale.unsqueeze(1)

    def backward(self, dout):
        self.start_backward(dout)
        if self.freeze:
            return None
        ids = self._ids.reshape(-1)
        rows = dout.reshape(-1, self.embedding_dim)
        if self.scale_grad_by_freq:
            counts = torch.bincount(ids, minlength=self.num_embeddings).to(rows.dtype)
            rows = rows / counts[ids].unsqueeze(1)
        if self.padding_idx is not None:
            rows = torch.where((ids != self.padding_idx).unsqueeze(1), rows, 0.0)
        self._grads["weight"].index_add_(0, ids, rows)
        return None
