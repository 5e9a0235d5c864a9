"""helpers._linear: the one dense kernel of RBM sampling, training and AIS, against float64 matmuls."""
import pytest
import torch

from helpers import _linear


@pytest.mark.parametrize("kernel", ["chosen", "addmm"])
@pytest.mark.parametrize("act", ["sigmoid", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_linear_matches_a_float64_reference(kernel, act, with_bias, layout):
    gen = torch.Generator().manual_seed(0)
    inp = (torch.rand(37, 50, generator=gen) < 0.3).float()
    if layout == "contiguous":
        weight = torch.randn(23, 50, generator=gen)
    elif layout == "transposed":  # as train_rbm passes W.T
        weight = torch.randn(50, 23, generator=gen).T
    else:  # neither contiguous nor a transpose of a contiguous matrix: copied first
        weight = torch.randn(23, 100, generator=gen)[:, ::2]
    bias = torch.randn(46, generator=gen)[::2] if with_bias else None  # a strided bias too
    f = _linear.linear_for(torch.float32, torch.device("cpu")) if kernel == "chosen" else _linear.addmm_linear
    out = f(inp, weight, bias, act)
    ref = inp.double() @ weight.double().T + (0 if bias is None else bias.double())
    if act == "sigmoid":
        ref = ref.sigmoid()
    assert out.shape == (37, 23) and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_other_dtypes_and_devices_use_addmm():
    assert _linear.linear_for(torch.float64, torch.device("cpu")) is _linear.addmm_linear
    assert _linear.linear_for(torch.float32, torch.device("cuda")) is _linear.addmm_linear
