"""Assertions shared by several test modules.

- :func:`rel_err` / :func:`assert_close_to_reference`: "this fast path equals that reference",
  measured as the max-norm error relative to the reference's max-norm;
- :func:`raises_naming`: "this call raises an error that names argument X" (word-bounded, so
  ``match="x"`` cannot be satisfied by any message that merely contains the letter x);
- :func:`assert_pieces_equal_one_pass`: a layer run in pieces from carried states equals one pass.
"""
import re

import pytest
import torch

from ssmkit.layers.base import run_steps


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (absolute error when the reference is all zero)."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    err = float((actual - expected).abs().max()) if actual.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_close_to_reference(actual, expected, tol: float, what: str = "output") -> None:
    """``rel_err(actual, expected) <= tol``, with shapes equal; the message gives the error."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(torch.as_tensor(actual)).all(), f"{what}: non-finite values"
    e = rel_err(actual, expected)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:.3g}"


def raises_naming(exc, argument: str):
    """``pytest.raises(exc)`` whose message names ``argument`` as a whole word."""
    return pytest.raises(exc, match=rf"(?<![\w.]){re.escape(argument)}(?!\w)")


def assert_pieces_equal_one_pass(layer, x, cut1, cut2, rtol=1e-10, atol=1e-12):
    """A layer with a (conv_state, ssm_state) pair run over x[:, :cut1], x[:, cut1:cut2], x[:, cut2:],
    each piece starting from the previous piece's state, equals one pass: outputs and both
    states; so does stepping token by token after the first piece. Returns the stepped state."""
    y_all, (c_all, h_all) = layer(x, return_state=True)
    y1, s1 = layer(x[:, :cut1], return_state=True)
    y2, s2 = layer(x[:, cut1:cut2], initial_state=s1, return_state=True)
    y3, (c3, h3) = layer(x[:, cut2:], initial_state=s2, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y_all, rtol=rtol, atol=atol)
    torch.testing.assert_close(c3, c_all, rtol=rtol, atol=atol)
    torch.testing.assert_close(h3, h_all, rtol=rtol, atol=atol)
    ys, state = run_steps(layer, x[:, cut1:], s1)
    torch.testing.assert_close(ys, y_all[:, cut1:], rtol=rtol, atol=atol)
    return state, h_all
