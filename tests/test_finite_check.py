"""The value check behind every public entry point (ssmkit._checks.check_finite) against the
plain definition, torch.isfinite(x).all()."""
import pytest
import torch

from helpers import raises_naming
from ssmkit._checks import _all_finite, check_finite, trusted_inputs

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_isfinite_for_every_bad_value_and_place(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=dtype)
    views = (lambda t: t, lambda t: t[:, ::2], lambda t: t.t(), lambda t: t[2:3])
    for view in views:
        assert _all_finite(view(x)) is True
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = (bad,) if not dtype.is_complex else (complex(bad, 0.0), complex(0.0, bad))  # in Re, in Im
        for i, j in ((0, 0), (2, 3), (5, 4)):
            for value in values:
                y = x.clone()
                y[i, j] = value
                for view in views:
                    v = view(y)
                    assert _all_finite(v) == bool(torch.isfinite(v).all())
    if dtype.is_complex:
        assert _all_finite(x.conj()) is True


def test_check_finite_names_the_argument_and_is_skipped_when_trusted():
    x = torch.tensor([1.0, float("nan")])
    with raises_naming(ValueError, "u"):
        check_finite("u", x)
    with trusted_inputs():
        assert check_finite("u", x) is x
    assert check_finite("u", torch.empty(0)) is not None
