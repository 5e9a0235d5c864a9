"""Bernoulli restricted Boltzmann machine in the course notation.

Visible units ``x`` (shape ``(n_visible,)``), hidden units ``h`` (shape
``(n_hidden,)``), both in {0, 1}. The energy is

    E(x, h) = -a.x - b.h - x.W.h,        W: (n_visible, n_hidden)

so that p(x, h) = exp(-E(x, h)) / Z. Summing out ``h`` gives the free energy

    F(x) = -a.x - sum_j softplus(b_j + (x W)_j),    p(x) = exp(-F(x)) / Z.

Everything is in nats (natural logarithms). Batches are rows: ``x`` has shape
``(batch, n_visible)``. The exact functions enumerate the smaller layer, so
they are for small models (see :data:`MAX_EXACT_UNITS`); larger models need
sampling (week 11).

Training (week 11): :func:`cd_gradient` (CD-k and PCD-k estimates in the layout of
:meth:`BernoulliRBM.exact_gradient`), :func:`cd_loss` (the same as a free-energy
loss for autograd, negatives detached), :func:`pseudo_log_likelihood`,
:func:`base_rate_visible_bias` and the fast minibatch loop :func:`train_rbm`.
Log Z of large models by annealed importance sampling: :mod:`helpers.ais`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from . import checkpoint as checkpoint_io
from ._linear import linear_for
from ._numerics import bernoulli as _bernoulli, softplus as _softplus
from ._validate import check_choice, check_count as _check_int, check_real
from .config import threads_for
from .ebm import contrastive_loss
from .train import History, build_settings, fit

#: The exact functions enumerate 2**k states of the smaller layer (k units);
#: above this k they refuse (2**24 states take about a minute on 2 CPU cores
#: for a 784-visible model).
MAX_EXACT_UNITS = 24

#: States enumerated per chunk: bounds memory at about chunk * max(M, N) numbers.
DEFAULT_CHUNK = 2**14


def binary_states(n_units: int, start: int = 0, stop: int | None = None, dtype=torch.float64, device=None):
    """All binary vectors of length ``n_units`` with index in ``[start, stop)``.

    Row ``k`` holds the bits of the integer ``k`` (unit ``i`` is bit ``i``), so
    ``binary_states(n)`` lists all ``2**n`` configurations once.

    Returns
    -------
    Tensor of shape ``(stop - start, n_units)`` with entries 0. and 1.
    """
    stop = 2**n_units if stop is None else stop
    idx = torch.arange(start, stop, device=device, dtype=torch.int64)
    bits = torch.arange(n_units, device=device, dtype=torch.int64)
    return ((idx[:, None] >> bits) & 1).to(dtype)


def _chunks(n_units: int, chunk: int, dtype, device):
    total = 2**n_units
    for start in range(0, total, chunk):
        yield binary_states(n_units, start, min(start + chunk, total), dtype, device)



class BernoulliRBM:
    """Restricted Boltzmann machine with binary visible and hidden units.

    Parameters
    ----------
    n_visible, n_hidden : int
        Layer sizes M and N (both >= 1).
    seed : int or None
        Seed of the weight initialisation ``W ~ N(0, 0.01**2)``; biases start at 0.
    dtype : torch.dtype
        ``torch.float32`` (default, for training) or ``torch.float64`` (for the
        exact checks).
    device : str or torch.device, optional
        Where the parameters live (default CPU).

    Attributes
    ----------
    W : Tensor, shape (n_visible, n_hidden)
        Couplings. ``a`` : Tensor, shape (n_visible,), visible bias.
        ``b`` : Tensor, shape (n_hidden,), hidden bias. All three can be set;
        a new value must have the same shape, dtype and device.
    """

    def __init__(self, n_visible: int, n_hidden: int, seed: int | None = None, dtype=torch.float32, device=None):
        n_visible, n_hidden = _check_int("n_visible", n_visible), _check_int("n_hidden", n_hidden)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = 0.01 * torch.randn(n_visible, n_hidden, generator=gen, dtype=dtype)
        self._params = {}
        self.W = w.to(self.device)
        self.a = torch.zeros(n_visible, dtype=dtype, device=self.device)
        self.b = torch.zeros(n_hidden, dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ parameters
    def _set(self, name, value, shape):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {tuple(shape)}, got {type(value).__name__}")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
        if value.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but the model is {self.dtype}; "
                            f"pass value.to({self.dtype}) explicitly")
        if value.device != self.device:
            raise ValueError(f"{name} is on {value.device} but the model is on {self.device}")
        self._params[name] = value

    W = property(lambda self: self._params["W"],
                 lambda self, v: self._set("W", v, (self.n_visible, self.n_hidden)),
                 doc="Couplings, shape (n_visible, n_hidden).")
    a = property(lambda self: self._params["a"],
                 lambda self, v: self._set("a", v, (self.n_visible,)), doc="Visible bias, shape (n_visible,).")
    b = property(lambda self: self._params["b"],
                 lambda self, v: self._set("b", v, (self.n_hidden,)), doc="Hidden bias, shape (n_hidden,).")

    def parameters(self) -> dict:
        """The parameters as a dict ``{"W": W, "a": a, "b": b}`` (the tensors themselves)."""
        return {"W": self.W, "a": self.a, "b": self.b}

    def __repr__(self):
        return f"BernoulliRBM(n_visible={self.n_visible}, n_hidden={self.n_hidden}, dtype={self.dtype})"

    # ------------------------------------------------------------------ input checks
    def _check_layer(self, t, n_units, layer):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{layer} must be a torch.Tensor, got {type(t).__name__} "
                            "(convert with torch.as_tensor)")
        if t.dim() != 2 or t.shape[1] != n_units:
            raise ValueError(f"{layer} must have shape (batch, {n_units}), got {tuple(t.shape)}"
                             + (" (use t[None] for a single configuration)" if t.dim() == 1 else ""))
        if t.is_floating_point() and torch.isnan(t).any():
            raise ValueError(f"{layer} contains {int(torch.isnan(t).sum())} NaN values")
        bad = (t != 0) & (t != 1)
        if bad.any():
            example = t[bad].flatten()[0].item()
            raise ValueError(f"a Bernoulli RBM needs binary {layer} (0/1), but {int(bad.sum())} entries are not, "
                             f"e.g. {example!r}; binarize first (helpers.data.load_mnist(binarize=...))")
        # 0/1 values are exact in every dtype, so this cast loses nothing.
        return t.to(dtype=self.dtype, device=self.device)

    def check_visible(self, x):
        """Validate a batch of visible configurations and return it in the model's dtype.

        Raises ``TypeError``/``ValueError`` naming the problem for a non-tensor,
        a wrong shape (must be ``(batch, n_visible)``), NaNs or non-binary values.
        """
        return self._check_layer(x, self.n_visible, "x (visible)")

    def check_hidden(self, h):
        """Like :meth:`check_visible` for hidden configurations ``(batch, n_hidden)``."""
        return self._check_layer(h, self.n_hidden, "h (hidden)")

    # ------------------------------------------------------------------ energies
    def energy(self, x, h):
        """E(x, h) = -a.x - b.h - x.W.h for paired rows of ``x`` (B, M) and ``h`` (B, N); shape (B,)."""
        x, h = self.check_visible(x), self.check_hidden(h)
        if x.shape[0] != h.shape[0]:
            raise ValueError(f"x and h need the same batch size, got {x.shape[0]} and {h.shape[0]}")
        return -(x @ self.a) - (h @ self.b) - ((x @ self.W) * h).sum(1)

    def _free_energy(self, x):
        return -(x @ self.a) - _softplus(x @ self.W + self.b).sum(1)

    def free_energy(self, x):
        """F(x) = -a.x - sum_j softplus(b_j + (xW)_j) in nats; ``x`` (B, M) -> shape (B,)."""
        return self._free_energy(self.check_visible(x))

    # ------------------------------------------------------------------ conditionals
    def prob_h_given_x(self, x):
        """p(h_j = 1 | x) = sigmoid(b_j + (xW)_j); ``x`` (B, M) -> (B, N)."""
        return torch.sigmoid(self.check_visible(x) @ self.W + self.b)

    def prob_x_given_h(self, h):
        """p(x_i = 1 | h) = sigmoid(a_i + (W h)_i); ``h`` (B, N) -> (B, M)."""
        return torch.sigmoid(self.check_hidden(h) @ self.W.T + self.a)

    def sample_h_given_x(self, x, generator: torch.Generator | None = None):
        """One Bernoulli draw per unit and per row of ``x`` (B, M); returns ``(p, h)``, both (B, N)."""
        p = self.prob_h_given_x(x)
        return p, torch.bernoulli(p, generator=generator)

    def sample_x_given_h(self, h, generator: torch.Generator | None = None):
        """One Bernoulli draw per unit and per row of ``h`` (B, N); returns ``(p, x)``, both (B, M)."""
        p = self.prob_x_given_h(h)
        return p, torch.bernoulli(p, generator=generator)

    # ------------------------------------------------------------------ exact (small models)
    def _exact_layer(self, max_units):
        k = min(self.n_visible, self.n_hidden)
        if k > max_units:
            raise ValueError(
                f"exact enumeration needs 2**{k} states of the smaller layer ({self.n_visible} visible, "
                f"{self.n_hidden} hidden); the limit is {max_units} units. Use a model with at most "
                f"{max_units} units in one layer, or estimate log Z by annealed importance sampling.")
        return "hidden" if self.n_hidden <= self.n_visible else "visible"

    def unnormalised_log_marginal(self, states, layer: str = "visible"):
        """log sum over the other layer of exp(-E), for each row of ``states``: nats, shape (rows,).

        ``layer="visible"``: rows are visible states x and the value is -F(x); ``layer="hidden"``:
        rows are hidden states h and the value is b.h + sum_i softplus(a_i + (W h)_i). Either
        way ``log Z`` is the log-sum-exp of these over all states of that layer, which is how
        :meth:`log_partition_exact` computes it (enumerating the smaller layer).
        """
        if layer == "hidden":  # log sum_x exp(-E(x, h)) = b.h + sum_i softplus(a_i + (W h)_i)
            return states @ self.b + _softplus(states @ self.W.T + self.a).sum(1)
        if layer != "visible":
            raise ValueError(f"layer must be 'visible' or 'hidden', got {layer!r}")
        return -self._free_energy(states)

    def gibbs_sweep(self, x, generator=None, *, beta: float = 1.0, base_visible_bias=None, pre=None,
                    workspace: dict | None = None):
        """One block-Gibbs sweep ``x -> h -> x'`` of the model at inverse temperature ``beta``.

        At ``beta = 1`` without a base bias it is the RBM's own sweep, ``h ~ p(h | x)`` then
        ``x' ~ p(x | h)``, which leaves p(x) invariant. Otherwise it is the sweep of the tempered
        model that AIS anneals through, with base visible bias ``a_A`` (zeros when None):

            p*_beta(x) = exp((1 - beta) a_A.x + beta a.x) prod_j (1 + exp(beta (b_j + (x W)_j))),
            h_j ~ sigmoid(beta (b_j + (x W)_j)),   x_i ~ sigmoid((1 - beta) a_A_i + beta (a_i + (W h)_i)).

        The inner loop of every RBM sampler of the course (:func:`gibbs_sweeps`,
        :func:`helpers.mcmc.gibbs_sample`, :class:`helpers.mcmc.PersistentChains`,
        :func:`helpers.ais.anneal`): no input checks (validate ``x`` once with
        :meth:`check_visible`), no gradients, one uniform draw per unit and row from
        ``generator`` (a unit is on when u < p). ``pre`` may pass ``b + x W`` when the caller
        has it already (AIS does, for its weights). ``workspace``: pass the same (initially empty)
        dict on every call of a long loop to reuse the buffers of the uniform draws (the same numbers,
        fewer allocations). Returns x' (rows, n_visible) in the model's dtype, a new tensor.
        """
        W, a, b = self.W.detach(), self.a.detach(), self.b.detach()
        lin = linear_for(W.dtype, W.device)
        plain = beta == 1 and base_visible_bias is None
        if pre is not None:
            ph = torch.sigmoid(beta * pre).to(W.dtype)
        else:
            ph = lin(x, W.T, b) if plain else torch.sigmoid(beta * lin(x, W.T, b, "none"))
        h = _draw(ph, generator, workspace, "h")
        if plain:
            return _draw(lin(h, W, a), generator, workspace, "x")
        a_base = torch.zeros_like(a) if base_visible_bias is None else base_visible_bias
        px = lin(h, W, a - a_base, "none").mul_(beta).add_(a_base).sigmoid_()
        return _draw(px, generator, workspace, "x")

    def log_partition_exact(self, chunk: int = DEFAULT_CHUNK, max_units: int = MAX_EXACT_UNITS):
        """log Z in nats, exact: sums out the larger layer analytically and
        enumerates the ``2**k`` states of the smaller one (``k`` units) in chunks
        of ``chunk`` states, combined with a stable log-sum-exp.

        Differentiable with respect to ``W``, ``a``, ``b``. Raises ``ValueError``
        when ``k > max_units`` (default :data:`MAX_EXACT_UNITS`).

        Returns
        -------
        Tensor of shape () in the model's dtype.
        """
        layer = self._exact_layer(max_units)
        n = self.n_hidden if layer == "hidden" else self.n_visible
        parts = [torch.logsumexp(self.unnormalised_log_marginal(s, layer), 0)
                 for s in _chunks(n, chunk, self.dtype, self.device)]
        return torch.logsumexp(torch.stack(parts), 0)

    def log_likelihood_exact(self, x, log_z=None):
        """log p(x) = -F(x) - log Z in nats per configuration; ``x`` (B, M) -> (B,).

        ``log_z`` may be passed to reuse an earlier :meth:`log_partition_exact`.
        """
        x = self.check_visible(x)
        log_z = self.log_partition_exact() if log_z is None else log_z
        return -self._free_energy(x) - log_z

    def positive_phase(self, x):
        """Data-dependent expectations <x h^T>, <x>, <h> over the rows of ``x``
        with ``h`` replaced by p(h | x) (exact, no sampling).

        Returns
        -------
        dict with ``"W"`` (M, N), ``"a"`` (M,), ``"b"`` (N,).
        """
        x = self.check_visible(x)
        ph = torch.sigmoid(x @ self.W + self.b)
        n = x.shape[0]
        return {"W": x.T @ ph / n, "a": x.mean(0), "b": ph.mean(0)}

    def negative_phase_exact(self, chunk: int = DEFAULT_CHUNK, max_units: int = MAX_EXACT_UNITS):
        """Model expectations <x h^T>, <x>, <h> under p(x, h), exact, by
        enumerating the smaller layer (same limits as :meth:`log_partition_exact`).

        Returns
        -------
        dict with ``"W"`` (M, N), ``"a"`` (M,), ``"b"`` (N,).
        """
        layer = self._exact_layer(max_units)
        zeros = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        out = {"W": zeros(self.n_visible, self.n_hidden), "a": zeros(self.n_visible), "b": zeros(self.n_hidden)}
        total = zeros(())                       # sum of exp(log weight - shift) so far
        shift = torch.tensor(-torch.inf, dtype=self.dtype, device=self.device)
        n = self.n_hidden if layer == "hidden" else self.n_visible
        # One pass: weights relative to the running maximum log weight, rescaling the sums when it grows.
        for s in _chunks(n, chunk, self.dtype, self.device):
            log_w = self.unnormalised_log_marginal(s, layer)
            new_shift = torch.maximum(shift, log_w.max())
            rescale = torch.exp(shift - new_shift)
            w = torch.exp(log_w - new_shift)
            if layer == "hidden":                # E[x | h] paired with h
                xs, hs = torch.sigmoid(s @ self.W.T + self.a), s
            else:                                # x paired with E[h | x]
                xs, hs = s, torch.sigmoid(s @ self.W + self.b)
            out["W"] = out["W"] * rescale + (xs * w[:, None]).T @ hs
            out["a"] = out["a"] * rescale + w @ xs
            out["b"] = out["b"] * rescale + w @ hs
            total = total * rescale + w.sum()
            shift = new_shift
        return {k: v / total for k, v in out.items()}  # divide by Z (in units of exp(shift))

    def exact_gradient(self, x, chunk: int = DEFAULT_CHUNK, max_units: int = MAX_EXACT_UNITS):
        """Gradient of the mean log-likelihood (1/B) sum_n log p(x_n) with
        respect to ``W``, ``a``, ``b``: positive phase minus negative phase.

        Returns
        -------
        dict with ``"W"`` (M, N), ``"a"`` (M,), ``"b"`` (N,), in nats per unit parameter.
        """
        pos = self.positive_phase(x)
        neg = self.negative_phase_exact(chunk, max_units)
        return {k: pos[k] - neg[k] for k in pos}


# ====================================================================== training (week 11)
#
# Contrastive divergence replaces the intractable negative phase <x h^T>_model
# by statistics of a few block-Gibbs sweeps:
#
#   CD-k: k sweeps x -> h -> x started at the data rows (Hinton 2002);
#   PCD:  k sweeps continuing persistent "fantasy" chains that survive from one
#         parameter update to the next (Tieleman 2008).
#
# Both use p(h | x) instead of sampled h in the statistics (lower variance,
# same expectation) and sample every unit of every row independently.




def _draw(p, generator, workspace, key):
    """Bernoulli(p) draws written over ``p`` (a fresh tensor of the sweep): 1.0 where U(0, 1) < p.

    The uniforms come from ``generator`` in the order of :func:`helpers._numerics.bernoulli` (the same
    numbers), into ``workspace[key]`` when a workspace dict is given (reused across sweeps).
    """
    if workspace is None:
        return _bernoulli(p, generator)
    u = workspace.get(key)
    if u is None or u.shape != p.shape or u.dtype != p.dtype:
        u = workspace[key] = torch.empty_like(p)
    return torch.lt(u.uniform_(generator=generator), p, out=p)


def _statistics(rbm, x):
    """<x h^T>, <x>, <h> over the rows of ``x`` with h replaced by p(h | x)."""
    ph = torch.sigmoid(x @ rbm.W + rbm.b)
    return {"W": x.T @ ph / x.shape[0], "a": x.mean(0), "b": ph.mean(0)}


def gibbs_sweeps(rbm, x, k: int = 1, generator: torch.Generator | None = None):
    """``k`` block-Gibbs sweeps ``x -> h ~ p(h | x) -> x ~ p(x | h)`` from each row of ``x``.

    Every unit of every row is an independent Bernoulli draw. Returns the new
    visible states, shape ``(batch, n_visible)``, binary, in the model's dtype.
    Each sweep is :meth:`BernoulliRBM.gibbs_sweep` (one implementation of
    block Gibbs in the course); small problems run on one CPU thread (see
    :data:`helpers.config.SMALL_MATMUL`, the thread policy of :func:`helpers.config.threads_for`),
    as do :func:`cd_gradient` and :func:`pseudo_log_likelihood`.
    """
    x = rbm.check_visible(x)
    _check_int("k", k, 1)
    with threads_for(x.shape[0] * rbm.n_visible * rbm.n_hidden), torch.no_grad():
        workspace = {}
        for _ in range(k):
            x = rbm.gibbs_sweep(x, generator, workspace=workspace)
    return x


def cd_gradient(rbm, x, k: int = 1, generator: torch.Generator | None = None, chains=None):
    """CD-k (``chains=None``) or PCD-k estimate of :meth:`BernoulliRBM.exact_gradient`.

    positive phase: <x h^T>, <x>, <h> over the rows of ``x`` with h -> p(h | x)
    (exactly :meth:`BernoulliRBM.positive_phase`);
    negative phase: the same statistics over ``x_neg``, the visible states after
    ``k`` block-Gibbs sweeps started at the data rows (CD-k) or at the persistent
    ``chains`` (PCD), again with h -> p(h | x_neg).

    Parameters
    ----------
    rbm : BernoulliRBM
        Any dtype; use float64 to compare with ``exact_gradient``.
    x : Tensor (B, n_visible), binary
        Data batch.
    k : int >= 1
        Gibbs sweeps per call.
    generator : torch.Generator, optional
        Source of every Bernoulli draw (one per unit and per row).
    chains : Tensor (C, n_visible), binary, optional
        PCD: the persistent chains. They are advanced ``k`` sweeps, **updated in
        place** (``chains.copy_(x_neg)``) and also returned as ``x_neg``; ``C``
        need not equal ``B``.

    Returns
    -------
    grad : dict with ``"W"`` (M, N), ``"a"`` (M,), ``"b"`` (N,)
        positive minus negative statistics, an estimate of the gradient of the
        mean log-likelihood in nats (same layout as ``exact_gradient``).
    x_neg : Tensor (B or C, n_visible)
        The negative samples (for PCD the new chain states).

    Notes
    -----
    CD-k is biased for finite k: its chains start at the data and have not
    reached p(x) after k sweeps. The bias shrinks as k grows; PCD chains are
    (nearly) at equilibrium when the parameters change slowly.
    """
    x = rbm.check_visible(x)
    _check_int("k", k, 1)
    start = x if chains is None else rbm.check_visible(chains)
    x_neg = gibbs_sweeps(rbm, start, k, generator)
    if chains is not None:
        chains.copy_(x_neg)
    with threads_for(max(len(x), len(x_neg)) * rbm.n_visible * rbm.n_hidden):
        pos, neg = _statistics(rbm, x), _statistics(rbm, x_neg)
    return {name: pos[name] - neg[name] for name in pos}, x_neg


def cd_loss(params, x, x_neg):
    """Contrastive-divergence surrogate loss ``mean F(x) - mean F(x_neg.detach())`` in nats:
    :func:`helpers.ebm.contrastive_loss` with the free energy as the energy.

    Its autograd gradient with respect to ``W``, ``a``, ``b`` is exactly minus
    the CD gradient of :func:`cd_gradient` for the same ``x_neg`` (so an
    optimizer minimising it performs CD/PCD ascent on the log-likelihood).
    The negative samples are **detached**: they came out of a sampler that
    depends on the parameters, but the CD gradient treats them as fixed draws.
    Back-propagating through them (e.g. through mean-field reconstructions
    ``sigmoid(a + W h)``) adds a term that is not part of the
    log-likelihood gradient -- the "detach the negatives" pitfall.

    Parameters
    ----------
    params : BernoulliRBM or mapping with ``"W"`` (M, N), ``"a"`` (M,), ``"b"`` (N,)
        The tensors to differentiate (e.g. ``rbm.parameters()`` after
        ``requires_grad_()``, or ``torch.nn.Parameter`` objects).
    x : Tensor (B, M)
        Data batch (binary).
    x_neg : Tensor (C, M)
        Negative samples, usually binary Gibbs samples; values in [0, 1]
        (mean-field reconstructions) are accepted.

    Returns
    -------
    Tensor of shape (): the loss, in nats.
    """
    if isinstance(params, BernoulliRBM):
        params = params.parameters()
    try:
        W, a, b = params["W"], params["a"], params["b"]
    except (KeyError, TypeError):
        raise TypeError("params must be a BernoulliRBM or a mapping with keys 'W', 'a', 'b'") from None
    m = W.shape[0]
    for name, t in (("x", x), ("x_neg", x_neg)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != m:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (batch, {m}), got {shape}")

    def free_energy(v):
        v = v.to(W.dtype)
        return -(v @ a) - _softplus(v @ W + b).sum(1)

    return contrastive_loss(free_energy, x, x_neg)     # the general loss of energy-based models, E = F here


def base_rate_visible_bias(x, eps: float = 0.01, dtype=None):
    """Visible bias of the independent-pixel ("base-rate") model fitted to data.

    ``a_i = logit(p_i)`` with the smoothed pixel means ``p_i = (mean_n x_ni + eps) / (1 + 2 eps)``;
    the smoothing keeps pixels that are always 0 (or 1) in the data finite
    (``eps = 0.01`` gives ``|a_i| <= log(101) = 4.6``). With ``W = 0`` and this
    ``a`` the model is the maximum-likelihood product of Bernoullis, smoothed.
    Used to initialise ``a`` before training and as the base model of AIS.

    Parameters
    ----------
    x : Tensor (n, M), values in [0, 1]
    eps : float in (0, 0.5)
    dtype : torch dtype, optional
        Of the result; default ``x``'s floating dtype (float32 for integer/bool data).

    Returns
    -------
    Tensor (M,)
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1:
        raise ValueError("x must be a tensor of shape (n, n_visible) with n >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
    xf = x.to(torch.float64)
    if torch.isnan(xf).any() or xf.min() < 0 or xf.max() > 1:
        raise ValueError("x must hold values in [0, 1] without NaNs")
    p = (xf.mean(0) + eps) / (1 + 2 * eps)
    return torch.logit(p).to(dtype)


# ---------------------------------------------------------------------- pseudo-likelihood
def _pll_bits(rbm, x, bits=None, chunk_elems: int = 2**22, pre=None):
    """Sum over bits i of log p(x_i | x_-i) (``bits=None``), or the single term of
    bit ``bits[n]`` for row n; ``x`` already validated, ``pre = x W + b`` if known."""
    W, a = rbm.W, rbm.a
    pre = x @ W + rbm.b if pre is None else pre  # (B, N)
    soft = _softplus(pre).sum(1)  # (B,)
    sign = 1 - 2 * x  # x~_i - x_i for the flipped bit
    if bits is not None:
        rows = torch.arange(x.shape[0], device=x.device)
        s = sign[rows, bits]  # (B,)
        d_free = s * a[bits] + _softplus(pre + s[:, None] * W[bits]).sum(1) - soft  # F(x) - F(x~)
        return -_softplus(d_free)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, chunk_elems // max(1, x.shape[0] * rbm.n_hidden))
    for i in range(0, rbm.n_visible, step):
        s = sign[:, i:i + step]  # (B, c)
        flipped = pre[:, None, :] + s[:, :, None] * W[i:i + step][None]  # (B, c, N)
        d_free = s * a[i:i + step] + _softplus(flipped).sum(2) - soft[:, None]
        total -= _softplus(d_free).sum(1)  # log sigmoid(F(x~) - F(x)) = -softplus(F(x) - F(x~))
    return total


def pseudo_log_likelihood(rbm, x, *, stochastic: bool = False, generator: torch.Generator | None = None):
    """Pseudo-log-likelihood ``sum_i log p(x_i | x_-i)`` per row, in nats.

    Each conditional needs only a ratio of two unnormalised probabilities,
    ``p(x_i | x_-i) = sigmoid(F(x with bit i flipped) - F(x))``, so ``Z`` cancels.

    **It is not the log-likelihood.** It scores how well each pixel is predicted
    from all the others; it never involves ``Z``, is not the log-probability of
    any normalised distribution over ``x``, and a model can score well on it while
    its samples are poor. Use it to monitor training, not to report model quality
    (for that: :meth:`BernoulliRBM.log_likelihood_exact` on small models,
    :func:`helpers.ais.ais_log_partition` on large ones).

    Parameters
    ----------
    x : Tensor (B, M), binary
    stochastic : bool
        ``False``: exact, ``M`` free-energy evaluations per row (for MNIST
        ``M = 784``: costly). ``True``: one uniformly random bit ``i_n`` per row,
        ``M * log p(x_{i_n} | x_-i_n)``, an unbiased but noisy estimate (as
        scikit-learn's ``BernoulliRBM.score_samples``).
    generator : torch.Generator, optional
        For the random bits (stochastic only).

    Returns
    -------
    Tensor (B,), nats per row (always <= 0).
    """
    x = rbm.check_visible(x)
    if stochastic:
        bits = torch.randint(rbm.n_visible, (x.shape[0],), generator=generator).to(x.device)
    with threads_for(x.shape[0] * rbm.n_visible * rbm.n_hidden):
        return _pll_bits(rbm, x) if not stochastic else rbm.n_visible * _pll_bits(rbm, x, bits)


# ---------------------------------------------------------------------- training loop
_CHECKPOINT_FORMAT = "helpers.rbm checkpoint 1"


class TrainHistory(History):
    """What :func:`train_rbm` returns: a :class:`helpers.train.History` (a dict of per-epoch
    lists, so ``pandas.DataFrame(history)`` works) with two attributes:

    ``chains``: the final PCD chains, Tensor (n_chains, n_visible) (``None`` for CD),
    for fantasy-particle plots or to continue training (``train_rbm(..., chains=history.chains)``);
    ``settings``: the settings of the run and how the metrics were measured.
    """

    chains = None


@dataclass(frozen=True)
class RBMSettings:
    """Everything :func:`train_rbm` needs besides the model, the data and the random source.

    Validated when built; its fields are the checkpoint fingerprint and ``history.settings``,
    so a setting is declared here, once. See :func:`train_rbm` for their meaning.
    """

    method: str = "cd"
    k: int = 1
    lr: float = 0.05
    momentum: float = 0.5
    weight_decay: float = 1e-4
    batch_size: int = 100
    n_epochs: int = 10
    n_chains: int = 100
    shuffle: bool = True
    n_monitor: int = 1000
    pll: str = "auto"

    def __post_init__(self):
        check_choice("method", self.method, ("cd", "pcd"))
        check_choice("pll", self.pll, ("auto", "exact", "stochastic"))
        for name in ("k", "batch_size", "n_epochs", "n_chains", "n_monitor"):
            _check_int(name, getattr(self, name), 1)
        check_real("lr", self.lr, 0, low_ok=False)
        check_real("momentum", self.momentum, 0, 1, high_ok=False)
        check_real("weight_decay", self.weight_decay, 0)


def _fused_cd_step(rbm, x_train, s: RBMSettings, gen, chains):
    """The CD-k / PCD-k update of :func:`train_rbm` as a step function ``idx -> {}`` for the loop.

    Same mathematics as :func:`cd_gradient` followed by a momentum update (pinned to it by
    tests/test_rbm_training.py), but fused for speed: the five products per update go through
    one kernel, ``lin(inp, weight, bias, act) = act(inp @ weight.T + bias)`` (oneDNN on CPU
    float32, else addmm; see helpers._linear), and draws and gradient statistics reuse
    preallocated buffers. Updates ``rbm``'s tensors and the PCD ``chains`` in place.
    """
    dev, dt = rbm.device, rbm.dtype
    M, N = rbm.n_visible, rbm.n_hidden
    B = min(s.batch_size, x_train.shape[0])
    W, a, b = rbm.W, rbm.a, rbm.b  # the model's own tensors: updated in place
    x_neg_buf = chains if s.method == "pcd" else torch.empty(B, M, dtype=dt, device=dev)
    C = x_neg_buf.shape[0]
    empty = lambda *shape: torch.empty(*shape, dtype=dt, device=dev)  # noqa: E731
    lin = linear_for(dt, dev)
    xb_buf, h_buf, rh_buf, rx_buf = empty(B, M), empty(max(B, C), N), empty(max(B, C), N), empty(max(B, C), M)
    # gradient statistics in one product: [xb; x_neg].T @ [ph_pos lr/m; -ph_neg lr/c]
    xsT_buf, ps_buf = empty(M, B + C), empty(B + C, N)
    vW, va, vb = torch.zeros_like(W), torch.zeros_like(a), torch.zeros_like(b)
    lr, momentum, k, cd = s.lr, s.momentum, s.k, s.method == "cd"

    def sample_(p, rnd, out):  # out = 1.0 where U(0,1) < p, independently per entry
        torch.rand(p.shape, generator=gen, out=rnd)
        return torch.lt(rnd, p, out=out)

    def step(idx):
        m = idx.shape[0]
        xb = torch.index_select(x_train, 0, idx, out=xb_buf[:m])
        ph_pos = lin(xb, W.T, b)                                   # positive phase: p(h | x)
        c = m if cd else C                                         # negative phase: k sweeps from the
        x_neg, h = x_neg_buf[:c], h_buf[:c]                        # batch (CD) or the chains (PCD)
        sample_(ph_pos if cd else lin(x_neg, W.T, b), rh_buf[:c], h)
        for sweep in range(k):
            sample_(lin(h, W, a), rx_buf[:c], x_neg)
            if sweep < k - 1:
                sample_(lin(x_neg, W.T, b), rh_buf[:c], h)
        ph_neg = lin(x_neg, W.T, b)
        xsT, ps = xsT_buf[:, :m + c], ps_buf[:m + c]               # gradient ascent on the log-likelihood
        xsT[:, :m].copy_(xb.T)
        xsT[:, m:].copy_(x_neg.T)
        torch.mul(ph_pos, lr / m, out=ps[:m])
        torch.mul(ph_neg, -lr / c, out=ps[m:])
        torch.add(lin(xsT, ps.T, None, "none"), vW, alpha=momentum, out=vW)
        if s.weight_decay:
            vW.add_(W, alpha=-lr * s.weight_decay)
        W.add_(vW)
        va.mul_(momentum).add_(xb.sum(0), alpha=lr / m).add_(x_neg.sum(0), alpha=-lr / c)
        vb.mul_(momentum).add_(ph_pos.sum(0), alpha=lr / m).add_(ph_neg.sum(0), alpha=-lr / c)
        a.add_(va)
        b.add_(vb)
        # one cheap reduction per batch screens for NaN/inf; a sum that overflows although every
        # entry is finite is told apart by the exact (slower) check
        if not math.isfinite(sum(float(t.sum()) for t in (W, a, b))) and not all(
                bool(torch.isfinite(t).all()) for t in (W, a, b)):
            raise FloatingPointError(f"the parameters became NaN or infinite with lr={lr}")
        return {}

    return step


def _monitor(rbm, x_train, x_valid, s: RBMSettings):
    """The per-epoch metrics of :func:`train_rbm` as an evaluation ``epoch -> dict``, and the pll mode used."""
    n, M = x_train.shape
    lin = linear_for(rbm.dtype, rbm.device)
    mon_idx = torch.linspace(0, n - 1, min(s.n_monitor, n)).round().long().to(rbm.device)
    x_mon = x_train[mon_idx]
    exact_pll = s.pll == "exact" or (s.pll == "auto" and M <= 64)
    # fixed PLL bits from their own generator: the training stream is untouched
    bits = None if exact_pll else torch.randint(
        M, (x_mon.shape[0],), generator=torch.Generator().manual_seed(12345)).to(rbm.device)
    n_gap = None if x_valid is None else min(s.n_monitor, x_valid.shape[0], n)

    def evaluate(epoch):
        W, a, b = rbm.W, rbm.a, rbm.b
        pre = lin(x_mon, W.T, b, "none")  # shared by the three metrics
        recon = lin(torch.sigmoid(pre), W, a)
        pll = _pll_bits(rbm, x_mon, pre=pre) if exact_pll else M * _pll_bits(rbm, x_mon, bits, pre=pre)
        gap = None
        if n_gap is not None:
            f_train = -(x_mon[:n_gap] @ a) - _softplus(pre[:n_gap]).sum(1)
            gap = float(rbm._free_energy(x_valid[:n_gap]).mean() - f_train.mean())
        return {"recon_error": float(((x_mon - recon) ** 2).mean()), "pseudo_log_likelihood": float(pll.mean()),
                "free_energy_gap": gap}

    return evaluate, x_mon.shape[0], "exact" if exact_pll else "stochastic"


def _training_data(rbm, x_train, x_valid):
    x_train = rbm.check_visible(x_train)
    if x_train.shape[0] == 0:
        raise ValueError("x_train is empty")
    if x_valid is not None:
        x_valid = rbm.check_visible(x_valid)
        if x_valid.shape[0] == 0:
            raise ValueError("x_valid is empty")
    return x_train, x_valid


def train_rbm(rbm, x_train, x_valid=None, *, chains=None, seed: int | None = 0,
              generator: torch.Generator | None = None, progress: bool = True, checkpoint=None, **settings):
    """Train ``rbm`` in place by minibatch CD-k or PCD-k with momentum and weight decay.

    Per minibatch of ``n`` rows (the last one may be smaller) with CD/PCD
    gradient estimate ``g`` (positive minus negative statistics, as in
    :func:`cd_gradient`)::

        v_W <- momentum * v_W + lr * (g_W - weight_decay * W);   W <- W + v_W
        v_a <- momentum * v_a + lr * g_a;                          a <- a + v_a   (same for b)

    Weight decay (an L2 penalty ``weight_decay/2 * |W|^2``) acts on ``W`` only,
    never on the biases. The velocities start at zero in every call.

    The loop is :func:`helpers.train.fit`; the settings (``method`` ... ``pll`` below) are the
    fields of :class:`RBMSettings`, passed as keyword arguments.

    Parameters
    ----------
    rbm : BernoulliRBM
        Trained in place, in its dtype (float32 for speed, float64 for checks).
        On the CPU, float32 products run on oneDNN's fused linear where it
        agrees with ``torch.addmm`` (about twice as fast on AMD processors; see
        ``helpers._linear``): the same numbers up to float32 rounding.
    x_train : Tensor (n, n_visible), binary
        Validated once (shape, NaNs, 0/1 values) before training.
    x_valid : Tensor (m, n_visible), binary, optional
        Held-out data for the free-energy gap.
    method : {"cd", "pcd"}
        CD-k restarts the negative chains at the minibatch; PCD-k continues
        ``n_chains`` persistent chains across minibatches and epochs.
    k : int >= 1
        Gibbs sweeps per parameter update.
    lr : float > 0
        Learning rate (gradients are per-example averages).
    momentum : float in [0, 1)
    weight_decay : float >= 0
    batch_size, n_epochs : int >= 1
    n_chains : int >= 1
        PCD only: number of persistent chains (ignored when ``chains`` is given).
    chains : Tensor (C, n_visible), binary, optional
        PCD only: initial chain states (e.g. ``history.chains`` of an earlier call).
        Default: independent draws from the base-rate model of ``x_train``
        (pixel i on with the smoothed mean of pixel i, see :func:`base_rate_visible_bias`).
    shuffle : bool
        Reshuffle the training rows every epoch.
    seed : int, or generator : torch.Generator
        All randomness (shuffling, chain initialisation, Bernoulli draws) comes
        from ``generator`` when given, else from ``torch.Generator().manual_seed(seed)``.
        The same seed gives the same run on the same machine and thread count.
    n_monitor : int >= 1
        Size of the fixed monitoring subset (evenly spaced training rows) used
        by the per-epoch metrics.
    pll : {"auto", "exact", "stochastic"}
        Pseudo-log-likelihood in the history: exact (``n_visible`` free-energy
        evaluations per image) or one random bit per image scaled by
        ``n_visible``; the bits are drawn once (fixed seed, independent of the
        training stream) so that epochs are compared on the same bits.
        ``"auto"``: exact when ``n_visible <= 64``.
    progress : bool
        Show a ``tqdm.auto`` progress bar.

    checkpoint : path, optional
        Save the trained ``W``, ``a``, ``b`` (and PCD chains) with the history
        there; on a later call with the same configuration (model size and
        initial weights, data, seed or generator state, every setting) load
        them instead of training, with a message. Stale, corrupted or unsafe
        files are ignored with a message and overwritten; nothing in the file
        is ever executed (see :mod:`helpers.checkpoint`).

    Returns
    -------
    TrainHistory
        dict of per-epoch lists (one entry per epoch, measured after the epoch):

        ``"epoch"``: 1, 2, ...;
        ``"recon_error"``: mean squared error **per pixel** between the monitoring
        images and their mean-field reconstruction ``sigmoid(a + W sigmoid(b + x W))``
        (a number in [0, 1]);
        ``"pseudo_log_likelihood"``: mean over the monitoring images, nats per image
        (see :func:`pseudo_log_likelihood`: not the likelihood);
        ``"free_energy_gap"``: mean F(x_valid) - mean F(x_train), nats, over the
        first ``min(n_monitor, len(x_valid), len(x_train))`` validation and
        monitoring images (``None`` without ``x_valid``); a growing gap signals
        overfitting;
        ``"time"``: seconds spent in the parameter updates of the epoch
        (the metrics excluded).

        ``history.chains`` holds the final PCD chains.

    Raises
    ------
    ValueError
        Bad arguments or data (non-binary, wrong shape, NaN).
    FloatingPointError
        The parameters became NaN or infinite (learning rate too large). The
        message gives the epoch and batch; nothing is adjusted silently and the
        model keeps its non-finite parameters.
    """
    s = build_settings(RBMSettings, settings)
    x_train, x_valid = _training_data(rbm, x_train, x_valid)
    if generator is None:
        seed = _check_int("seed", seed, 0)
        generator = torch.Generator(device=rbm.device).manual_seed(seed)
    gen = generator
    M, N = rbm.n_visible, rbm.n_hidden
    if s.method == "cd" and chains is not None:
        raise ValueError("chains is only used with method='pcd'")
    fingerprint = None
    if checkpoint is not None:
        digest = checkpoint_io.digest
        fingerprint = checkpoint_io.fingerprint(
            s, model=f"BernoulliRBM({M}, {N}, {rbm.dtype})", initial_weights=digest(rbm.W, rbm.a, rbm.b),
            x_train=digest(x_train), x_valid="none" if x_valid is None else digest(x_valid),
            chains="none" if chains is None else digest(chains), generator=digest(gen.get_state()))
    if s.method == "pcd":   # persistent chains, by default drawn from the base-rate model of the data
        if chains is None:
            p_on = torch.sigmoid(base_rate_visible_bias(x_train, dtype=rbm.dtype))
            chains = _bernoulli(p_on.expand(s.n_chains, M).contiguous(), gen)
        else:
            chains = rbm.check_visible(chains).clone()
    evaluate, n_monitor, pll = _monitor(rbm, x_train, x_valid, s)
    recorded = dict(dataclasses.asdict(s), n_chains=chains.shape[0] if s.method == "pcd" else None,
                    n_monitor=n_monitor, pll=pll)

    def state():
        out = {"W": rbm.W.detach().clone(), "a": rbm.a.detach().clone(), "b": rbm.b.detach().clone()}
        return out if chains is None else dict(out, chains=chains.clone())

    def restore(stored):
        nonlocal chains
        with torch.no_grad():
            for name in ("W", "a", "b"):
                getattr(rbm, name).copy_(stored[name])
        chains = stored.get("chains")

    with torch.no_grad(), threads_for(min(s.batch_size, x_train.shape[0]) * M * N):
        run = fit(
            _fused_cd_step(rbm, x_train, s, gen, chains), x_train.shape[0], n_epochs=s.n_epochs,
            batch_size=min(s.batch_size, x_train.shape[0]), generator=gen, shuffle=s.shuffle, evaluate=evaluate,
            progress=progress, desc=f"{s.method.upper()}-{s.k}", show=("recon_error", "pseudo_log_likelihood"),
            device=rbm.device, settings=recorded, checkpoint=checkpoint, fingerprint=fingerprint,
            kind=_CHECKPOINT_FORMAT, state=state, restore=restore,
            hint=f"Try a smaller learning rate (e.g. lr={s.lr / 10:g}); the model keeps the non-finite values.")
    history = TrainHistory(run)
    history.settings = run.settings or recorded
    history.chains = None if chains is None else chains.clone()
    return history
