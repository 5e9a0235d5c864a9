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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
        for name, n in (("n_visible", n_visible), ("n_hidden", n_hidden)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
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
        return -(x @ self.a) - F.softplus(x @ self.W + self.b).sum(1)

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

    def _log_weights(self, states, layer):
        """Unnormalised log-probabilities of the smaller layer's states (rows)."""
        if layer == "hidden":  # log sum_x exp(-E(x, h)) = b.h + sum_i softplus(a_i + (W h)_i)
            return states @ self.b + F.softplus(states @ self.W.T + self.a).sum(1)
        return -self._free_energy(states)

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
        parts = [torch.logsumexp(self._log_weights(s, layer), 0)
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
        log_z = self.log_partition_exact(chunk, max_units)
        zeros = lambda *s: torch.zeros(*s, dtype=self.dtype, device=self.device)  # noqa: E731
        out = {"W": zeros(self.n_visible, self.n_hidden), "a": zeros(self.n_visible), "b": zeros(self.n_hidden)}
        n = self.n_hidden if layer == "hidden" else self.n_visible
        for s in _chunks(n, chunk, self.dtype, self.device):
            w = torch.exp(self._log_weights(s, layer) - log_z)  # p(state), shape (chunk,)
            if layer == "hidden":
                h, x_mean = s, torch.sigmoid(s @ self.W.T + self.a)  # E[x | h]
                out["W"] += (x_mean * w[:, None]).T @ h
                out["a"] += w @ x_mean
                out["b"] += w @ h
            else:
                x, h_mean = s, torch.sigmoid(s @ self.W + self.b)  # E[h | x]
                out["W"] += (x * w[:, None]).T @ h_mean
                out["a"] += w @ x
                out["b"] += w @ h_mean
        return out

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
