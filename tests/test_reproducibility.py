"""Same seed, same bits: every helpers function that samples or trains gives
bitwise identical results on CPU when run twice with the same seed, and
different results with another seed (so the comparison can fail)."""
import pytest
import torch

from helpers import ais, data, ising, mcmc, rbm, vae
from helpers.config import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def G(seed):
    return torch.Generator().manual_seed(seed)


def _flat(result):
    """All tensors (and floats) in a result, in a fixed order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (float, int)):
        return [torch.tensor(float(result))]
    if isinstance(result, dict):
        return [t for k in sorted(result, key=str) for t in _flat(result[k])]
    if isinstance(result, (list, tuple)):
        return [t for r in result for t in _flat(r)]
    if result is None:
        return []
    raise TypeError(type(result))


def _same(r1, r2):
    f1, f2 = _flat(r1), _flat(r2)
    return len(f1) == len(f2) and all(torch.equal(a, b) for a, b in zip(f1, f2))


def _tiny_rbm(seed=0, m=8, n=4):
    model = rbm.BernoulliRBM(m, n, seed=seed, dtype=torch.float32)
    model.W = torch.randn(m, n, generator=G(100)) * 0.5
    return model


X = torch.bernoulli(torch.full((40, 8), 0.4), generator=G(7))


def _train_rbm(seed, method):
    model = _tiny_rbm()
    hist = rbm.train_rbm(model, X, X[:10], method=method, n_chains=6, batch_size=10, n_epochs=2, seed=seed,
                         progress=False)
    return [model.W, model.a, model.b, _without_time(hist), hist.chains]


def _without_time(history):
    return {k: v for k, v in history.items() if k not in ("time", "epoch_time")}


def _train_vae(seed):
    model = vae.mlp_vae(latent_dim=2, hidden=16, seed=seed)
    x = torch.bernoulli(torch.full((48, 784), 0.3), generator=G(3))
    hist = vae.train_vae(model, x, x[:16], n_epochs=2, batch_size=16, seed=seed, progress=False)
    return [list(model.state_dict().values()), _without_time(hist)]


def _ising_dataset(seed, tmp_path):
    out = ising.ising_dataset(4, [1.5, 3.0], 6, seed=seed, n_thermalize=5, n_between=2, cache_dir=False,
                              progress=False)
    return out.spins


CASES = {
    "seed_everything": lambda s: (seed_everything(s), torch.rand(5))[1],
    "BernoulliRBM init": lambda s: rbm.BernoulliRBM(6, 3, seed=s).W,
    "sample_h_given_x": lambda s: _tiny_rbm().sample_h_given_x(X, generator=G(s)),
    "sample_x_given_h": lambda s: _tiny_rbm().sample_x_given_h(X[:, :4], generator=G(s)),
    "gibbs_sweeps": lambda s: rbm.gibbs_sweeps(_tiny_rbm(), X, k=3, generator=G(s)),
    "cd_gradient": lambda s: rbm.cd_gradient(_tiny_rbm(), X, k=2, generator=G(s)),
    "pseudo_log_likelihood (stochastic)": lambda s: rbm.pseudo_log_likelihood(_tiny_rbm(), X, stochastic=True,
                                                                            generator=G(s)),
    "train_rbm CD": lambda s: _train_rbm(s, "cd"),
    "train_rbm PCD": lambda s: _train_rbm(s, "pcd"),
    "metropolis_hastings": lambda s: mcmc.metropolis_hastings(lambda x: -(x ** 2).sum(1), torch.zeros(5, 2), 50,
                                                              mcmc.gaussian_proposal(0.5), generator=G(s)).samples,
    "gibbs_sample": lambda s: mcmc.gibbs_sample(_tiny_rbm(), X, 5, generator=G(s), keep_every=1),
    "PersistentChains": lambda s: mcmc.PersistentChains(_tiny_rbm(), 7, generator=G(s)).step(4),
    "ais_log_partition": lambda s: ais.ais_log_partition(_tiny_rbm(), n_runs=8, n_betas=50, data=X,
                                                         generator=G(s), progress=False)[:3],
    "random_spins": lambda s: ising.random_spins(3, 4, generator=G(s)),
    "metropolis_sweeps": lambda s: ising.metropolis_sweeps(ising.random_spins(3, 4, generator=G(0)), 2.5, 5,
                                                           generator=G(s)),
    "wolff_updates": lambda s: ising.wolff_updates(ising.random_spins(3, 4, generator=G(0)), 2.3, 5,
                                                   generator=G(s)),
    "ising_dataset": lambda s: _ising_dataset(s, None),
    "binarize_sample": lambda s: data.binarize_sample(torch.rand(20, 30, generator=G(1)), generator=G(s)),
    "mlp_vae init": lambda s: list(vae.mlp_vae(hidden=8, seed=s).state_dict().values()),
    "conv_vae init": lambda s: list(vae.conv_vae(seed=s).state_dict().values()),
    "VAE.sample": lambda s: vae.mlp_vae(hidden=8).sample(4, generator=G(s)),
    "elbo": lambda s: vae.elbo(vae.mlp_vae(hidden=8), X.new_ones(3, 784), generator=G(s)),
    "iwae_log_likelihood": lambda s: vae.iwae_log_likelihood(vae.mlp_vae(hidden=8), X.new_ones(3, 784), k=7,
                                                             batch_k=3, generator=G(s)),
    "train_vae": _train_vae,
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_bits_other_seed_other_bits(name):
    fn = CASES[name]
    first, again, other = fn(1), fn(1), fn(2)
    assert _same(first, again), f"{name}: two runs with seed 1 differ"
    assert not _same(first, other), f"{name}: seeds 1 and 2 give identical results (is the seed used?)"


def test_load_mnist_sample_binarization_is_seeded(shared_data):
    a, _ = data.load_mnist("test", root=shared_data, binarize="sample", seed=1, limit=200, download=False)
    b, _ = data.load_mnist("test", root=shared_data, binarize="sample", seed=1, limit=200, download=False)
    c, _ = data.load_mnist("test", root=shared_data, binarize="sample", seed=2, limit=200, download=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
