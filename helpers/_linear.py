"""The one dense kernel of RBM sampling and training: ``act(inp @ weight.T + bias)`` as fast as exactly possible.

Every Gibbs sweep and every CD/PCD update is a handful of such products
(x @ W, h @ W.T and the gradient statistics x.T @ p(h|x)). On CPUs, float32
uses oneDNN's fused linear (+ sigmoid) when PyTorch has it and it agrees with
``torch.addmm`` here (on AMD processors it runs about twice as fast as the
default MKL sgemm); everything else uses ``torch.addmm``. Both are float32
GEMMs: they differ only in rounding (about 1e-6).

The oneDNN op is private to PyTorch, so every call is guarded: if it raises at
some shape, that call and all later ones use ``torch.addmm`` (one
``RuntimeWarning`` says so). ``COURSE_ONEDNN=0`` (read by
:func:`helpers.config.onednn_enabled`) turns it off altogether;
:func:`kernel_name` says which kernel is in use.
"""
from __future__ import annotations

import warnings

import torch

from .config import onednn_enabled

#: Does oneDNN's fused linear work here? None: not checked yet (decided on first use, by a check
#: against addmm); False after a failed check or after the op raised at some shape.
ONEDNN_OK: bool | None = None
_ACTS = ("sigmoid", "none")
ONEDNN_NAME, ADDMM_NAME = "oneDNN fused linear", "torch.addmm"


def _onednn_op(inp, weight, bias, act):
    """The bare oneDNN call (may raise): used as it is by the first-use check only."""
    # oneDNN takes a weight that is contiguous or the transpose of a contiguous matrix (checked on
    # first use), but silently misreads other strides, e.g. a sliced bias: those are copied first.
    if not (weight.is_contiguous() or weight.T.is_contiguous()):
        weight = weight.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(inp.contiguous(), weight, bias, act, [], "")


def onednn_linear(inp, weight, bias, act="sigmoid"):
    """oneDNN's fused linear, guarded: where it raises, ``torch.addmm`` from then on (one warning)."""
    global ONEDNN_OK
    if ONEDNN_OK is False:  # the op failed earlier; a caller may still hold this function
        return addmm_linear(inp, weight, bias, act)
    try:
        return _onednn_op(inp, weight, bias, act)
    except Exception as err:
        ONEDNN_OK = False
        warnings.warn(
            f"oneDNN's fused linear (torch.ops.mkldnn._linear_pointwise) failed for input "
            f"{tuple(inp.shape)}, weight {tuple(weight.shape)}, bias "
            f"{None if bias is None else tuple(bias.shape)}, act={act!r} ({type(err).__name__}: {err}); "
            "this and all later products use torch.addmm: results stay correct, only slower.",
            RuntimeWarning, stacklevel=2)
        return addmm_linear(inp, weight, bias, act)


def addmm_linear(inp, weight, bias, act="sigmoid"):
    out = torch.mm(inp, weight.T) if bias is None else torch.addmm(bias, inp, weight.T)
    return out.sigmoid_() if act == "sigmoid" else out


def linear_for(dtype, device):
    """``f(inp, weight, bias, act="sigmoid") = act(inp @ weight.T + bias)``, the fastest exact kernel here.

    ``inp`` has shape (rows, in); ``weight`` has shape (out, in), as in
    ``torch.nn.Linear``; ``bias`` has shape (out,) or is None (no bias);
    ``act`` is ``"sigmoid"`` or ``"none"``. Returns a new (rows, out) tensor.
    """
    global ONEDNN_OK
    if dtype != torch.float32 or device.type != "cpu" or not onednn_enabled():
        return addmm_linear
    if ONEDNN_OK is None:
        try:
            gen = torch.Generator().manual_seed(0)
            inp, weight, bias = (torch.randn(s, generator=gen) for s in ((7, 13), (5, 13), (5,)))
            ok = True
            for w in (weight, weight.T.contiguous().T):  # both weight layouts that are passed on as they are
                for b in (bias, None):
                    for act in _ACTS:
                        out = _onednn_op(inp, w, b, act)
                        ok &= (out.shape == (7, 5) and out.dtype == torch.float32
                               and torch.allclose(out, addmm_linear(inp, w, b, act), atol=1e-5))
            ONEDNN_OK = bool(ok)
        except Exception:  # op missing in this build or on this CPU: fall back silently
            ONEDNN_OK = False
    return onednn_linear if ONEDNN_OK else addmm_linear


def kernel_name(dtype=torch.float32, device="cpu"):
    """Name of the kernel :func:`linear_for` picks for ``dtype`` on ``device``:
    ``"oneDNN fused linear"`` or ``"torch.addmm"`` (checks oneDNN on first use)."""
    return ONEDNN_NAME if linear_for(dtype, torch.device(device)) is onednn_linear else ADDMM_NAME
