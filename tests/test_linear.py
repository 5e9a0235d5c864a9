"""helpers._linear: the one dense kernel of RBM sampling, training and AIS, against float64 matmuls."""
import warnings

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


def _shapes(rows, gen):
    x = (torch.rand(rows, 13, generator=gen) < 0.3).float()
    return x, torch.randn(5, 13, generator=gen), torch.randn(5, generator=gen)


def test_a_raising_onednn_op_falls_back_to_addmm_for_that_call_and_all_later_ones(monkeypatch):
    calls = []

    def op_failing_at_three_rows(inp, weight, bias, act, scalars, algorithm):
        calls.append(inp.shape[0])
        if inp.shape[0] == 3:
            raise RuntimeError("unsupported shape")
        return _linear.addmm_linear(inp, weight, bias, act)  # passes the first-use check

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", op_failing_at_three_rows, raising=False)
    monkeypatch.setattr(_linear, "ONEDNN_OK", None)
    monkeypatch.delenv("COURSE_ONEDNN", raising=False)
    cpu = torch.device("cpu")
    lin = _linear.linear_for(torch.float32, cpu)
    assert lin is _linear.onednn_linear and _linear.kernel_name() == "oneDNN fused linear"
    gen = torch.Generator().manual_seed(1)
    (x5, W, b), (x3, _, _) = _shapes(5, gen), _shapes(3, gen)
    calls.clear()
    lin(x5, W, b)
    assert calls == [5]
    with pytest.warns(RuntimeWarning) as record:
        out = lin(x3, W, b, "sigmoid")
    assert torch.equal(out, _linear.addmm_linear(x3, W, b, "sigmoid"))
    assert len(record) == 1
    message = str(record[0].message)
    assert "mkldnn._linear_pointwise" in message and "(3, 13)" in message and "RuntimeError" in message
    assert "results stay correct, only slower" in message
    assert calls == [5, 3] and _linear.ONEDNN_OK is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for x in (x5, x3):
            for act in ("sigmoid", "none"):
                assert torch.equal(lin(x, W, b, act), _linear.addmm_linear(x, W, b, act))
    assert calls == [5, 3]  # the held function no longer calls the op
    assert _linear.linear_for(torch.float32, cpu) is _linear.addmm_linear
    assert _linear.kernel_name() == "torch.addmm"


def test_a_failing_first_use_check_is_silent_and_picks_addmm(monkeypatch):
    def missing(*args):
        raise RuntimeError("no such op in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", missing, raising=False)
    monkeypatch.setattr(_linear, "ONEDNN_OK", None)
    monkeypatch.delenv("COURSE_ONEDNN", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _linear.linear_for(torch.float32, torch.device("cpu")) is _linear.addmm_linear
    assert _linear.ONEDNN_OK is False


@pytest.mark.parametrize("value", ["0", "off", "no"])
def test_course_onednn_off_forces_addmm(monkeypatch, value):
    def must_not_run(*args):
        raise AssertionError("oneDNN op called with COURSE_ONEDNN off")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", must_not_run, raising=False)
    monkeypatch.setattr(_linear, "ONEDNN_OK", None)
    monkeypatch.setenv("COURSE_ONEDNN", value)
    assert _linear.linear_for(torch.float32, torch.device("cpu")) is _linear.addmm_linear
    assert _linear.kernel_name() == "torch.addmm"
    assert _linear.ONEDNN_OK is None  # not even checked


@pytest.mark.parametrize("value", ["", "1", "yes"])
def test_course_onednn_on_or_unset_uses_onednn_when_the_check_passes(monkeypatch, value):
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda inp, weight, bias, act, *rest: _linear.addmm_linear(inp, weight, bias, act),
                        raising=False)
    monkeypatch.setattr(_linear, "ONEDNN_OK", None)
    monkeypatch.setenv("COURSE_ONEDNN", value)
    assert _linear.linear_for(torch.float32, torch.device("cpu")) is _linear.onednn_linear
    assert _linear.kernel_name() == "oneDNN fused linear"
    assert _linear.kernel_name(torch.float64) == "torch.addmm"


def test_course_onednn_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("COURSE_ONEDNN", "nope")
    with pytest.raises(ValueError, match="COURSE_ONEDNN"):
        _linear.linear_for(torch.float32, torch.device("cpu"))
