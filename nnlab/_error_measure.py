"""The error measure of ``nnlab.grad_compare`` (its module docstring states it): a layer's
tensors against a reference's, each on its own scale with an absolute floor, and the
comparison of all of them with one reference."""

import math
from typing import NamedTuple, Optional

import torch

__all__ = ["NOISE_ROUNDINGS", "Comparison", "TensorError", "compare", "largest", "rounding_noise", "scale", "scales", "tensor_error"]

# A reference is trusted to this many units of rounding (eps of its dtype) of the largest
# quantity it was computed from.
NOISE_ROUNDINGS = 16


class TensorError(NamedTuple):
    """One tensor's comparison: the error measure, where it is largest, and the two values there."""

    name: str  # "input", "param#01", ..., "output"
    error: float  # max |a - b| / (s + |b|); inf when a is missing or misshapen
    index: Optional[tuple] = None  # where the error is largest
    actual: float = math.nan
    expected: float = math.nan
    difference_norm: float = math.inf  # ||a - b||

    def describe(self, reference):
        return f"{self.name}{list(self.index)}: {self.actual:.6g} (the layer's) vs {self.expected:.6g} ({reference})"


class Comparison(NamedTuple):
    """The layer against one reference: an error per tensor and the tolerance."""

    reference: str  # "autograd", "torch.nn twin", "torch.nn twin (forward)", "finite differences"
    tolerance: float
    tensors: list
    kinks: int = 0  # finite-difference entries left out because the function has a kink there
    left_out: int = 0  # entries not differenced (only a sample of each large tensor was)

    @property
    def worst(self):
        return max(self.tensors, key=lambda t: t.error, default=TensorError("-", 0.0))

    @property
    def passed(self):
        return all(t.error <= self.tolerance for t in self.tensors)

    def describe(self):
        worst = self.worst
        if self.passed:
            text = f"{self.reference}: ok, worst error {worst.error:.1e} (tolerance {self.tolerance:g})"
        elif worst.index is None:
            text = f"{self.reference}: FAIL at {worst.name}: no usable tensor to compare"
        else:
            wrong = "wrong output" if self.reference.endswith("(forward)") else "wrong gradient (the backward's VJP)"
            text = (
                f"{self.reference}: FAIL, {wrong}: error {worst.error:.1e} (tolerance {self.tolerance:g}) "
                f"at {worst.describe(self.reference)}"
            )
        if self.kinks:
            text += f"; {self.kinks} entries at kinks left to the other references"
        if self.left_out:
            text += f"; {self.left_out} entries not differenced (a sample of each large tensor was)"
        return text


def largest(references):
    """The largest |entry| over the reference tensors (None for a missing one); 0 if none."""
    largest = max((r.detach().abs().max().item() for r in references if r is not None and r.numel()), default=0.0)
    return largest if math.isfinite(largest) else 0.0


def scale(references):
    """The largest |entry| over the reference tensors, 1 if all are 0."""
    return largest(references) or 1.0


def rounding_noise(references):
    """The rounding error a reference computed in floating point may carry in any entry:
    NOISE_ROUNDINGS units of rounding of the largest |entry| of all the references (a sum
    that cancels to 0, such as the gradient of a bias followed by BatchNorm, keeps the
    rounding of its terms)."""
    dtypes = [r.dtype for r in references if r is not None and r.is_floating_point()]
    if not dtypes:
        return 0.0
    return NOISE_ROUNDINGS * torch.finfo(dtypes[0]).eps * largest(references)


def scales(references, noises, tolerance):
    """s of the error measure for each reference tensor: its largest |entry|, but no less
    than its noise / tolerance (so that a difference within the noise passes); 1 where
    both are 0."""
    return [max(largest([reference]), noise / tolerance) or 1.0 for reference, noise in zip(references, noises)]


def tensor_error(name, actual, expected, scale, skip=None):
    """TensorError of ``actual`` against ``expected``: max |a - b| / (scale + |b|)."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return TensorError(name, math.inf)
    if expected.numel() == 0:
        return TensorError(name, 0.0, difference_norm=0.0)
    a = actual.detach().double()
    b = expected.detach().double().to(a.device)
    norm = (a - b).norm().item()
    ratio = (a - b).abs() / (scale + b.abs())
    ratio = torch.where(ratio.isnan(), torch.full_like(ratio, math.inf), ratio)
    if skip is not None:
        ratio = torch.where(skip.to(ratio.device), torch.zeros_like(ratio), ratio)
    worst = int(ratio.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), actual.shape))
    values = (a.reshape(-1)[worst].item(), b.reshape(-1)[worst].item())
    return TensorError(name, ratio.reshape(-1)[worst].item(), index, *values, norm)


def compare(reference, names, actual, expected, tolerance, skips=None, noises=None, kinks=0, left_out=0):
    """The Comparison of each actual tensor with its expected one, each on its own scale;
    ``noises``, one per tensor, the reference's error (by default, the rounding of a
    computation in its dtype); ``skips`` masks the entries not judged."""
    noises = [rounding_noise(expected)] * len(names) if noises is None else noises
    floors = scales(expected, noises, tolerance)
    skips = skips if skips is not None else [None] * len(names)
    tensors = [tensor_error(n, a, e, sc, s) for n, a, e, sc, s in zip(names, actual, expected, floors, skips)]
    return Comparison(reference, tolerance, tensors, kinks, left_out)
