"""Float comparisons whose tolerance follows the magnitudes compared (issue 15, item 6).

``torch.testing.assert_close``'s defaults (float32: rtol 1.3e-6, atol 1e-5) judge every element on
its own: a gradient entry near zero that sums hundreds of float32 products in another order can miss
them by one ulp of the LARGEST term. These helpers scale the tolerance by the largest magnitude of
the reference instead, which is what summation round-off is proportional to.
"""

from __future__ import annotations

import torch


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "tensors") -> None:
    """``max |actual - expected| <= rtol * max |expected|`` (shapes must match).

    Args:
        actual: the tensor under test.
        expected: the reference (its largest absolute value sets the scale; a float64 reference
            is best).
        rtol: allowed error relative to that scale. For float32 sums of n terms, round-off is about
            n * 6e-8 of the largest term: 1e-5 covers a few hundred terms.
        what: named in the failure message.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual64, expected64 = actual.detach().double(), expected.detach().double()
    scale = float(expected64.abs().max()) if expected64.numel() else 0.0
    error = float((actual64 - expected64).abs().max()) if expected64.numel() else 0.0
    assert error <= rtol * scale, (
        f"{what}: max |diff| {error:.3g} > {rtol:g} x max |expected| {scale:.3g} (= {rtol * scale:.3g})"
    )
