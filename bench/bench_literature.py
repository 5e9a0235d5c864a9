"""How close are the course's notebooks to the papers? Test log-likelihoods on MNIST vs published ones.

Run (from the repository root; the standard MNIST split is required):

    COURSE_DATA=/path/to/data python bench/bench_literature.py [--minutes 60] [--threads 1] [--only vae|rbm]
    COURSE_DATA=/path/to/data python bench/bench_literature.py --quick --threads 1     (smoke test, < 2 min)

Two models, each trained twice in this process: with the notebook's in-lecture
settings, and for as long as the training budget ``--minutes`` allows (split
evenly between the models; the in-lecture runs are not counted in it). The
long run's epoch count comes from the epoch time measured in the in-lecture
run of the same model (for the RBM: update time per image plus the fixed
per-epoch metrics), so each long run is one uninterrupted training call (no
optimizer restart). Add to the budget the in-lecture runs (about 2.5 min on one
thread) and the evaluation (IWAE with k=5000 on 1,000 images about 100 s per
VAE, AIS about 40 s per RBM).

* Week-12 MLP VAE (784-512-10, ReLU), Adam lr 1e-3, batch 128, dynamic
  binarization; in lecture 15 epochs on all 60,000 images. Test figure: the
  IWAE bound L_k (k = 1, 100, ``--k``) on ``--n-test`` test images binarized once
  (seed 0); mean and standard error over images.
* Week-11 RBM (784 x 200), PCD-1 as in notebooks/week11/03_rbms_on_mnist.ipynb
  (lr 0.02, momentum 0.5, weight decay 1e-4, batch 100, 100 chains, then a final
  stage at lr 0.002 continuing the chains, one tenth of the epochs); in lecture
  7,000 images, 50 + 5 epochs; long run on 59,000 (the last 1,000 are the
  validation slice). Test figure: -F(x) - log Z on all 10,000 test images
  (binarized once, seed 1), log Z by AIS (100 runs, ``--n-betas``, with
  ``--check-betas`` as a convergence check); AIS stderr of log Z and stderr over images.

Every number printed is measured in the run, except the published figures,
which are labelled with their citation. Timings move when the machine is shared.
"""
import argparse
import math
import sys
import time

import torch

from helpers.ais import ais_log_partition, log_likelihood
from helpers.data import load_mnist, mnist_split_info
from helpers.rbm import BernoulliRBM, base_rate_visible_bias, train_rbm
from helpers.vae import iwae_log_likelihood, mlp_vae, train_vae

VAE_PUBLISHED = ("-86.76 (L_5000), Burda, Grosse & Salakhutdinov (2016), Table 1, VAE, 1 stochastic layer, k=1",
                 "784-200-200-50 tanh, dynamic binarization, 3,280 epochs (3^i for i=0..7, decaying lr), batch 20")
RBM_PUBLISHED = ("-86.34, Salakhutdinov & Murray (2008), 500 hidden units, CD-25, AIS; "
                 "about -125 (CD-1, 500 hidden units) [CD-1 figure secondhand, NOT checked against the paper's table]",
                 "500 hidden units, CD-25 (and CD-1), fresh stochastic binarization per minibatch in the authors' code")
VAE_SHORT = "-86.76 (published, Burda et al. 2016)"
RBM_SHORT = "-86.34 CD-25; about -125 CD-1, unchecked (published, Salakhutdinov & Murray 2008)"


def sem(t):
    """Standard error of the mean of a 1-D tensor."""
    return t.std().item() / math.sqrt(len(t))


def budget_epochs(budget_s, epoch_s):
    """Epochs that fit in ``budget_s`` at ``epoch_s`` seconds each (at least 1), with a message."""
    epochs = max(1, int(budget_s / epoch_s))
    print(f"budget: {epochs} epochs fit in {budget_s:.0f} s at {epoch_s:.2f} s per epoch (from the in-lecture run)")
    return epochs


def vae_run(x_train, x_test, n_epochs, args):
    """Train a fresh week-12 MLP VAE in one call; returns (model, wall seconds)."""
    model = mlp_vae(latent_dim=10, seed=args.seed)
    t0 = time.perf_counter()
    hist = train_vae(model, x_train, x_test, n_epochs=n_epochs, batch_size=128, lr=1e-3, seed=args.seed,
                     dynamic_binarization=True, progress=False)
    dt = time.perf_counter() - t0
    print(f"  {n_epochs} epochs on {len(x_train)} images in {dt:.1f} s ({dt / n_epochs:.2f} s per epoch); "
          f"test ELBO after the last epoch {hist['test_elbo'][-1]:.2f} nats (all {len(x_test)} test images)")
    return model, dt


def vae_eval(model, x_eval, ks, args):
    """IWAE bounds L_k on ``x_eval``: {k: (mean, stderr over images)}."""
    out = {}
    for k in ks:
        t0 = time.perf_counter()
        est = iwae_log_likelihood(model, x_eval, k=k, generator=torch.Generator().manual_seed(args.seed + k))
        out[k] = (est.mean().item(), sem(est))
        print(f"    L_{k:<5d} = {out[k][0]:8.2f} +- {out[k][1]:.2f} nats per image ({time.perf_counter() - t0:.1f} s)")
    return out


def bench_vae(args, budget_s, rows):
    """In-lecture and long run of the week-12 MLP VAE, evaluated on the same test images and noise."""
    x_train, _ = load_mnist("train")                              # grey levels, dynamic binarization
    x_test, _ = load_mnist("test", binarize="sample", seed=0)     # one fixed binarization
    n_lecture, epochs_lecture = (4000, 2) if args.quick else (len(x_train), 15)
    n_long = 8000 if args.quick else len(x_train)
    x_eval = x_test[:args.n_test]
    ks = sorted({1, min(100, args.k), args.k})
    print(f"\n=== Week-12 MLP VAE (784-512-10 ReLU), IWAE bounds on the first {len(x_eval)} test images ===")

    def run_setting(setting, n, epochs):
        """Train on the first ``n`` images for ``epochs`` epochs, evaluate, add a row: the wall time."""
        print(f"{setting} run:")
        model, dt = vae_run(x_train[:n], x_test, epochs, args)
        res = vae_eval(model, x_eval, ks, args)
        mean, err = res[ks[-1]]
        rows.append(("VAE 784-512-10", setting, n, str(epochs), dt, f"{mean:.2f} +- {err:.2f} (L_{ks[-1]})",
                     "dyn. bin., Adam 1e-3, batch 128"))
        return dt

    epoch_s = run_setting("in-lecture", n_lecture, epochs_lecture) / epochs_lecture
    # the long run: same images in the real run; the epoch time scaled by the image count in --quick
    run_setting("long", n_long, budget_epochs(budget_s, epoch_s * n_long / n_lecture))
    print(f"published: {VAE_PUBLISHED[0]}\n  their protocol: {VAE_PUBLISHED[1]}")
    print("  differences: 784-512-10 ReLU (one deterministic layer, 10 latents) vs 784-200-200-50 tanh; "
          f"constant Adam lr 1e-3 vs a decaying schedule; batch 128 vs 20; ours L_{ks[-1]} on {len(x_eval)} "
          "test images binarized once (seed 0)")


def rbm_run(x_train, x_valid, epochs, args):
    """The notebook's two-stage PCD-1 recipe on a fresh 784 x 200 RBM: (rbm, wall s, s in the updates)."""
    rbm = BernoulliRBM(784, 200, seed=args.seed)
    rbm.a = base_rate_visible_bias(x_train)
    settings = dict(method="pcd", k=1, momentum=0.5, weight_decay=1e-4, batch_size=100, n_chains=100,
                    progress=False)   # threads: --threads sets torch's count; the helpers' policy does the rest
    t0 = time.perf_counter()
    stage1 = train_rbm(rbm, x_train, x_valid, lr=0.02, n_epochs=epochs[0], seed=args.seed, **settings)
    stage2 = train_rbm(rbm, x_train, x_valid, lr=0.002, n_epochs=epochs[1], seed=args.seed + 1, chains=stage1.chains,
              **settings)
    dt = time.perf_counter() - t0
    print(f"  {epochs[0]} + {epochs[1]} epochs on {len(x_train)} images in {dt:.1f} s "
          f"({dt / sum(epochs):.2f} s per epoch); free-energy gap (valid - train) {stage2['free_energy_gap'][-1]:.2f}")
    return rbm, dt, sum(stage1["time"]) + sum(stage2["time"])


def rbm_eval(rbm, x_train, x_test, args):
    """AIS log Z (check and final schedules) and the test log-likelihood: (mean, AIS stderr, image stderr)."""
    log_z = {}
    for n_betas in (args.check_betas, args.n_betas):
        t0 = time.perf_counter()
        ais = ais_log_partition(rbm, n_runs=100, n_betas=n_betas, data=x_train, progress=False,
                                generator=torch.Generator().manual_seed(args.seed + 3))
        ll = log_likelihood(rbm, x_test, ais)
        print(f"    {n_betas:6d} betas: log Z = {ais.log_z:9.3f} +- {ais.stderr:.3f} (ESS {ais.ess:5.1f} of 100), "
              f"test log-likelihood {ll.mean:8.2f} nats per image ({time.perf_counter() - t0:.1f} s)")
        log_z[n_betas] = ais.log_z
    print(f"    convergence check: log Z moved by {log_z[args.n_betas] - log_z[args.check_betas]:+.3f} nats "
          f"from {args.check_betas} to {args.n_betas} betas")
    return ll.mean, ais.stderr, sem(ll.per_image)


def bench_rbm(args, budget_s, rows):
    """In-lecture and long run of the week-11 RBM, evaluated on all test images."""
    x_all, _ = load_mnist("train", binarize="sample", seed=0)
    x_test, _ = load_mnist("test", binarize="sample", seed=1)
    n_lecture, epochs_lecture = (2000, (2, 1)) if args.quick else (7000, (50, 5))
    n_long = 8000 if args.quick else len(x_all) - 1000
    x_valid = x_all[-1000:]
    print(f"\n=== Week-11 RBM 784 x 200, PCD-1, test log-likelihood on all {len(x_test)} test images ===")

    def run_setting(setting, n, epochs):
        """Train on the first ``n`` images, evaluate, add a row: (wall s, s in the updates)."""
        print(f"{setting} run:")
        x_train = x_all[:n]
        rbm, dt, t_updates = rbm_run(x_train, x_valid, epochs, args)
        mean, ais_err, img_err = rbm_eval(rbm, x_train, x_test, args)
        rows.append(("RBM 784x200", setting, n, f"{epochs[0]}+{epochs[1]}", dt,
                     f"{mean:.2f} +- {ais_err:.2f} (AIS) +- {img_err:.2f} (images)", "PCD-1, fixed binarization"))
        return dt, t_updates

    dt, t_updates = run_setting("in-lecture", n_lecture, epochs_lecture)
    # the long run: an epoch costs per-image updates plus fixed per-epoch metrics
    n_epochs = sum(epochs_lecture)
    update_s, overhead_s = t_updates / (n_epochs * n_lecture), (dt - t_updates) / n_epochs
    total = budget_epochs(budget_s, overhead_s + update_s * n_long)
    epochs_long = (max(1, round(total * 10 / 11)), max(1, round(total / 11)))  # the notebook's 10:1 split
    run_setting("long", n_long, epochs_long)
    print(f"published: {RBM_PUBLISHED[0]}\n  their protocol: {RBM_PUBLISHED[1]}")
    print("  differences: 200 vs 500 hidden units; PCD-1 vs CD-25; training length (epochs above); "
          "binarization: theirs fresh stochastic per minibatch (authors' code), ours one fixed stochastic "
          f"binarization (train seed 0, test seed 1); ours AIS with 100 runs x {args.n_betas} betas")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=None, help="training budget of the long runs (default 60)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny budget, few images, small k and betas")
    ap.add_argument("--only", choices=("vae", "rbm"), help="run one model only (it gets the whole budget)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation, training and evaluation noise")
    ap.add_argument("--n-test", type=int, default=None, help="test images for the IWAE bound (default 1000)")
    ap.add_argument("--full-test", action="store_true", help="IWAE bound on all 10,000 test images")
    ap.add_argument("--k", type=int, default=None, help="largest IWAE k (default 5000, as Burda et al.)")
    ap.add_argument("--n-betas", type=int, default=None, help="AIS inverse temperatures (default 10000)")
    ap.add_argument("--check-betas", type=int, default=None, help="AIS convergence check (default 3000)")
    args = ap.parse_args()
    q = args.quick
    args.minutes = args.minutes if args.minutes is not None else (0.25 if q else 60)
    args.n_test = 10000 if args.full_test else (args.n_test or (200 if q else 1000))
    args.k = args.k or (20 if q else 5000)
    args.n_betas, args.check_betas = args.n_betas or (300 if q else 10000), args.check_betas or (100 if q else 3000)
    if args.threads:
        torch.set_num_threads(args.threads)

    for split in ("train", "test"):
        info = mnist_split_info(split)
        print(f"{split}: {info}")
        if not info.startswith("standard"):
            sys.exit("refusing to run: this is not the standard MNIST split, so a comparison with published "
                     "figures is meaningless. Put all four MNIST files in $COURSE_DATA/MNIST/raw/.")
    models = [args.only] if args.only else ["vae", "rbm"]
    budget_s = args.minutes * 60 / len(models)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; long-run budget {budget_s:.0f} s per "
          f"model{' (quick smoke test: numbers are not meaningful)' if q else ''}; log-likelihoods in nats per image")

    rows, t_start = [], time.perf_counter()
    if "vae" in models:
        bench_vae(args, budget_s, rows)
    if "rbm" in models:
        bench_rbm(args, budget_s, rows)

    head = ("model", "setting", "training images", "epochs", "training time (s)",
            "test log-likelihood (nats per image) +- error", "published figure", "protocol")
    print(f"\n{' | '.join(head)}")
    for model, setting, n, epochs, dt, ll, protocol in rows:
        published = VAE_SHORT if model.startswith("VAE") else RBM_SHORT
        print(f"{model} | {setting} | {n} | {epochs} | {dt:.1f} | {ll} | {published} | {protocol}")
    for name, (figure, protocol) in (("vae", VAE_PUBLISHED), ("rbm", RBM_PUBLISHED)):
        if name in models:
            print(f"published ({name}): {figure}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
