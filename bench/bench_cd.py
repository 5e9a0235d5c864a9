"""One CD-1 epoch of a 784 x 500 RBM: helpers.rbm.train_rbm against scikit-learn's BernoulliRBM.

Run:  COURSE_DATA=/path/to/data python bench/bench_cd.py      (about a minute on 2 cores)

What is compared, in one process, on the same data:

* data: MNIST "train" from ``helpers.data.load_mnist`` binarized with a fixed
  threshold (pixel/255 > 0.5), float32 -- the standard 60,000 training images
  when present, otherwise the offline fallback split (8,000 images, printed);
* ours: ``train_rbm(rbm, x, method="cd", k=1, batch_size=100, n_epochs=1,
  progress=False)`` on a fresh 784 x 500 float32 RBM (lr 0.05, momentum 0.5,
  weight decay 1e-4), the whole call timed (input validation and the
  end-of-epoch metrics included);
* scikit-learn: ``BernoulliRBM(n_components=500, batch_size=100,
  learning_rate=0.05, n_iter=1).fit(x)`` on the same float32 array (it keeps
  float32; note that it runs PCD with batch_size chains, the same matmul count
  per batch as CD-1 and no momentum);
* both with 1 thread each, then with all threads (torch's and
  OpenBLAS's defaults); every timing is the best of 3, interleaved.

Both compute the same five fp32 matmuls per batch of B rows (x@W, h@W.T, x_neg@W
and the gradient statistics x.T@p(h|x), x_neg.T@p(h|x_neg), each 2*B*784*500
FLOPs; train_rbm computes the last two as one product with 2B inner rows). The
difference is the kernel: torch's default sgemm (MKL) and OpenBLAS are close on
this machine, while oneDNN's fused linear, which ``helpers._linear`` picks for
CPU float32 when it agrees with addmm, is about twice as fast on AMD processors.
The script prints which kernel train_rbm uses here.

It also measures the fp32 throughput of each kernel (torch.mm, and oneDNN's
linear where used) on exactly the epoch's matmul shapes (tight loop, best
burst) and divides the epoch's matmul FLOPs, 10 * n * 784 * 500, by the epoch
time: the fraction of this machine's best measured matmul throughput that the
epoch reaches; and it times the epoch's matmuls alone, back to back, with each
kernel, as the floor of any dense implementation using it.

On a machine shared with other jobs every number moves; all-thread timings
suffer most (threads waiting for each other).
"""
import time
import warnings

import torch
from sklearn.neural_network import BernoulliRBM as SkRBM
from threadpoolctl import threadpool_limits

from helpers import _linear
from helpers.data import load_mnist, mnist_split_info
from helpers.rbm import BernoulliRBM, train_rbm

M, N, B = 784, 500, 100
REPEAT = 3


def ours(x):
    rbm = BernoulliRBM(M, N, seed=0)
    t0 = time.perf_counter()
    hist = train_rbm(rbm, x, method="cd", k=1, lr=0.05, momentum=0.5, weight_decay=1e-4, batch_size=B,
                     n_epochs=1, seed=0, progress=False)
    return time.perf_counter() - t0, hist["time"][0]


def sklearn(x_np):
    rbm = SkRBM(n_components=N, batch_size=B, learning_rate=0.05, n_iter=1, random_state=0)
    t0 = time.perf_counter()
    rbm.fit(x_np)
    assert rbm.components_.dtype == x_np.dtype
    return time.perf_counter() - t0


KERNELS = {"torch.mm": lambda a, b_t: torch.mm(a, b_t.T)}
_lin = _linear.linear_for(torch.float32, torch.device("cpu"))
if _lin is _linear.onednn_linear:  # the kernel train_rbm uses here, when it is not plain torch
    KERNELS["oneDNN linear"] = lambda a, b_t: _lin(a, b_t, None, "none")
FAST = list(KERNELS)[-1]  # the kernel train_rbm uses here


def matmul_gflops(seconds=0.3):
    """Best fp32 throughput of each kernel on the epoch's three matmul shapes (GFLOP/s), in bursts of 20.

    Returns {kernel: {shape: GFLOP/s}}. A product a @ b is computed as kernel(a, b.T) with b.T
    the transpose of a contiguous matrix, as train_rbm passes its weights.
    """
    shapes = {"x@W": (B, M, N), "h@W.T": (B, N, M), "x.T@p": (M, 2 * B, N)}
    best = {}
    for kernel_name, kernel in KERNELS.items():
        best[kernel_name] = {}
        for name, (m, k, n) in shapes.items():
            a, b = torch.rand(m, k), torch.rand(k, n)
            kernel(a, b.T)
            elapsed, rates = 0.0, []
            while elapsed < seconds:
                t0 = time.perf_counter()
                for _ in range(20):
                    kernel(a, b.T)
                dt = time.perf_counter() - t0
                rates.append(20 * 2 * m * k * n / dt / 1e9)
                elapsed += dt
            best[kernel_name][name] = max(rates)
    return best


def matmuls_only_epoch(n, kernel):
    """The epoch's matmuls per batch back to back with ``kernel``, nothing else (seconds): three
    (B x 784) @ (784 x 500)-sized products and the gradient statistics as one (784 x 2B) @ (2B x 500)."""
    gen = torch.Generator().manual_seed(0)
    W = 0.01 * torch.randn(M, N, generator=gen)
    x = (torch.rand(B, M, generator=gen) < 0.15).float()
    h = (torch.rand(B, N, generator=gen) < 0.5).float()
    xsT = (torch.rand(M, 2 * B, generator=gen) < 0.15).float()
    ps = torch.rand(2 * B, N, generator=gen)
    t0 = time.perf_counter()
    for _ in range((n + B - 1) // B):
        kernel(x, W.T)
        kernel(h, W)
        kernel(x, W.T)
        kernel(xsT, ps.T)
    return time.perf_counter() - t0


def paused(f, *args, pause=0.5):
    """f(*args) after a pause (seconds) in which spinning BLAS/OpenMP threads of the previous call go idle."""
    time.sleep(pause)
    return f(*args)


def main():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = load_mnist("train", binarize="threshold")
    x = x.contiguous()
    x_np = x.numpy()
    n = len(x)
    flops = 10 * n * M * N
    print(f"data: {mnist_split_info('train')}; {n} images, fixed threshold binarization (pixel/255 > 0.5), float32")
    print(f"model: 784 x 500, CD-1, batch {B}, one epoch = {(n + B - 1) // B} batches, "
          f"{flops / 1e9:.1f} GFLOP of matmuls\n")
    default_threads = torch.get_num_threads()
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            ours(x[:1000])  # warm-up (allocations, MKL init)
            sklearn(x_np[:1000])
            t_ours, t_loop, t_sk, t_mm, t_fast = [], [], [], [], []
            for _ in range(REPEAT):  # interleaved, so that both see the same load; a pause before each
                # timing lets the previous library's idle threads stop spin-waiting on the cores
                total, loop = paused(ours, x)
                t_ours.append(total)
                t_loop.append(loop)
                t_sk.append(paused(sklearn, x_np))
                t_mm.append(paused(matmuls_only_epoch, n, KERNELS["torch.mm"]))
                t_fast.append(paused(matmuls_only_epoch, n, KERNELS[FAST]))
            peak = matmul_gflops()
        rows.append((threads, min(t_ours), min(t_loop), min(t_sk), min(t_mm), min(t_fast), peak))
    torch.set_num_threads(default_threads)

    print(f"matmul kernel used by train_rbm here: {FAST}\n")
    print(f"{'threads':>7} | {'train_rbm':>9} | {'epoch loop':>10} | {'sklearn':>8} | {'ratio':>5} | "
          f"{'ratio, loop':>11} | {'peak':>10} | {'epoch':>10} | {'of peak':>7}")
    for threads, t_ours, t_loop, t_sk, t_mm, t_fast, peak in rows:
        best = max(max(v.values()) for v in peak.values())
        rate = flops / t_loop / 1e9
        print(f"{threads:>7} | {t_ours:8.3f}s | {t_loop:9.3f}s | {t_sk:7.3f}s | {t_sk / t_ours:4.2f}x | "
              f"{t_sk / t_loop:10.2f}x | {best:5.0f} GF/s | {rate:5.0f} GF/s | {rate / best:6.0%}")
        for kernel_name, per_shape in peak.items():
            print(f"{'':>7}   {kernel_name} per shape (GFLOP/s): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in per_shape.items()))
        print(f"{'':>7}   the epoch's matmuls alone: {t_mm:.3f}s with torch.mm, {t_fast:.3f}s with {FAST}; "
              f"the epoch loop takes {t_loop / t_fast:.2f}x the time of its matmuls alone")
    print("""
train_rbm: the whole call (input validation and end-of-epoch metrics included); epoch loop: the
parameter updates only (history["time"]). ratio = sklearn time / train_rbm time (goal >= 1.5).
peak: the best fp32 throughput of any kernel above (torch.mm, and oneDNN's linear where train_rbm
uses it) on the epoch's shapes; of peak = epoch matmul FLOPs / epoch loop time / peak (goal >= 60%).
matmuls alone: the epoch's matmuls per batch back to back, nothing else: the floor of a dense
implementation with that kernel (scikit-learn's OpenBLAS matmuls are comparable to torch.mm here).
Every timing is the best of 3, interleaved; other jobs on a shared machine slow every number.""")


if __name__ == "__main__":
    main()
