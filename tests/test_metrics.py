"""helpers.metrics against independent computations: knn_accuracy against a brute-force vote, mode_coverage on
hand-made and exact Gaussian samples, the Fréchet distance against closed forms and scipy's matrix square root,
precision/recall against a brute-force loop and hand-counted cases, the label histogram against scipy's entropy."""
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn as nn

from helpers.metrics import (
    frechet_distance,
    frechet_distance_gaussians,
    knn_accuracy,
    label_histogram,
    mode_coverage,
    precision_recall,
)


def _brute_force(ref, ref_y, qry, qry_y, k):
    correct = 0
    for q, label in zip(qry, qry_y):
        d = np.sqrt(((ref - q) ** 2).sum(1))
        nearest = sorted(range(len(ref)), key=lambda j: (d[j], j))[:k]
        votes = np.bincount(ref_y[nearest], minlength=10)
        correct += int(np.argmax(votes) == label)  # argmax: the smallest label wins ties
    return correct / len(qry)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    ref, qry = rng.normal(size=(200, 3)), rng.normal(size=(150, 3))
    ref_y, qry_y = rng.integers(0, 4, 200), rng.integers(0, 4, 150)
    ref_y[ref[:, 0] > 0.5] = 1  # some structure, so that the accuracy is not just chance
    qry_y[qry[:, 0] > 0.5] = 1
    got = knn_accuracy(torch.tensor(ref), torch.tensor(ref_y), torch.tensor(qry), torch.tensor(qry_y), k=k,
                       batch_size=64)
    assert got == pytest.approx(_brute_force(ref, ref_y, qry, qry_y, k), abs=1e-12)


def test_separated_clusters_are_classified_and_one_point_is_chance():
    centres = torch.eye(5) * 10
    labels = torch.arange(5).repeat(40)
    x = centres[labels] + torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert knn_accuracy(x[::2], labels[::2], x[1::2], labels[1::2]) == 1.0
    same = torch.zeros(200, 5)  # every point identical: ties go to the first reference points
    acc = knn_accuracy(same[::2], labels[::2], same[1::2], labels[1::2], k=10)
    assert acc == pytest.approx(0.2)  # the vote is always label 0..4 of the first ten: one class in five


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be"), (dict(k=11), "exceeds"),
    (dict(test_features=torch.zeros(4, 3)), "same dimension"),
    (dict(train_labels=torch.zeros(10)), "integer tensor"),
    (dict(train_features=torch.full((10, 2), float("nan"))), "NaN"),
])
def test_bad_arguments(kwargs, match):
    args = dict(train_features=torch.zeros(10, 2), train_labels=torch.zeros(10, dtype=torch.long),
                test_features=torch.zeros(4, 2), test_labels=torch.zeros(4, dtype=torch.long), k=3)
    args.update(kwargs)
    if "test_features" in kwargs:
        args["test_labels"] = torch.zeros(len(kwargs["test_features"]), dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        knn_accuracy(**args)


# ---------------------------------------------------------------------- mode_coverage
def _ring(k=8, radius=2.0):
    angles = 2 * np.pi * np.arange(k) / k
    return torch.tensor(np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1))


def test_mode_coverage_counts_a_hand_made_set():
    c = _ring()
    right = torch.tensor([1.0, 0.0], dtype=torch.float64)
    samples = torch.cat([c[0].repeat(5, 1),                   # 5 exactly on mode 0
                         c[1] + 0.05 * right.repeat(3, 1),    # 3 at 2.5 sigma from mode 1: high quality
                         c[2] + 0.07 * right.repeat(2, 1),    # 2 at 3.5 sigma from mode 2: not
                         torch.zeros(1, 2, dtype=torch.float64)])  # the origin: far from every mode
    got = mode_coverage(samples, c, 0.02)
    assert got.modes_covered == 2
    assert got.high_quality_fraction == pytest.approx(8 / 11)
    assert got.counts.tolist() == [5, 3, 0, 0, 0, 0, 0, 0]
    assert mode_coverage(samples, c, 0.02, min_count=4).modes_covered == 1   # mode 1 has only 3
    assert mode_coverage(samples, c, 0.02, n_std=4.0).modes_covered == 3     # 3.5 sigma now inside
    per_mode = torch.full((8,), 0.02, dtype=torch.float64)
    per_mode[1] = 0.01                                                       # 5 sigma for mode 1 now
    assert mode_coverage(samples, c, per_mode).counts.tolist() == [5, 0, 0, 0, 0, 0, 0, 0]


def test_mode_coverage_of_samples_from_six_of_eight_gaussians():
    """Exact samples of 6 of the 8 modes: 6 covered, and the high-quality fraction is the
    probability 1 - exp(-9/2) that a 2-D Gaussian lies within 3 sigma (chi-square, 2 dof)."""
    rng = np.random.default_rng(0)
    c, sigma, n = _ring(), 0.05, 24000
    which = rng.integers(0, 6, n)
    samples = c[which].numpy() + sigma * rng.normal(size=(n, 2))
    got = mode_coverage(samples, c, sigma)
    p = 1 - np.exp(-4.5)
    assert got.modes_covered == 6
    assert abs(got.high_quality_fraction - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert got.counts[6:].sum() == 0 and got.counts.sum() == round(got.high_quality_fraction * n)
    expected = np.bincount(which, minlength=8)[:6] * p
    assert np.all(np.abs(got.counts[:6].numpy() - expected) < 5 * np.sqrt(expected))


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples=torch.zeros(5, 3)), "dimension 3"),
    (dict(scale=-1.0), "scale must be"), (dict(scale=torch.ones(3)), "one per centre"),
    (dict(n_std=0.0), "n_std must be"), (dict(min_count=0), "min_count must be"),
    (dict(samples=torch.full((4, 2), float("nan"))), "NaN"), (dict(samples=torch.zeros(4)), "shape"),
])
def test_mode_coverage_refuses_bad_arguments(kwargs, match):
    args = dict(samples=torch.zeros(5, 2), centres=_ring(), scale=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mode_coverage(**args)


# ---------------------------------------------------------------------- Fréchet distance
def _random_rotation(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_gaussians_with_commuting_covariances_is_the_closed_form():
    """C_a = Q diag(a) Q^T, C_b = Q diag(b) Q^T commute: d^2 = |dm|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(1)
    d = 6
    q, a, b = _random_rotation(d, rng), rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    ma, mb = rng.normal(size=d), rng.normal(size=d)
    exact = ((ma - mb) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_gaussians(ma, q @ np.diag(a) @ q.T, mb, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(exact, rel=1e-10)
    assert frechet_distance_gaussians([0.3], [[4.0]], [1.3], [[1.0]]) == pytest.approx(1.0 + 1.0)  # 1-D: dm^2 + ds^2
    assert frechet_distance_gaussians(ma, q @ np.diag(a) @ q.T, ma, q @ np.diag(a) @ q.T) == pytest.approx(0, abs=1e-12)


def test_frechet_gaussians_against_scipy_sqrtm_for_non_commuting_covariances():
    """The textbook formula tr sqrtm(C_a C_b) (a general, complex matrix square root) gives the same number."""
    rng = np.random.default_rng(2)
    d = 5
    ca, cb = (lambda m: m @ m.T + 0.1 * np.eye(d))(rng.normal(size=(d, d))), np.cov(rng.normal(size=(d, 40)))
    ma, mb = rng.normal(size=d), rng.normal(size=d)
    reference = ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real
    assert frechet_distance_gaussians(ma, ca, mb, cb) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance_gaussians(mb, cb, ma, ca) == pytest.approx(reference, rel=1e-9)   # symmetric


def test_frechet_distance_of_large_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    d, n = 3, 40000
    ca = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    cb = np.diag([1.0, 2.0, 0.2])
    ma, mb = np.zeros(d), np.array([0.5, -0.2, 0.1])
    exact = frechet_distance_gaussians(ma, ca, mb, cb)
    xa = rng.multivariate_normal(ma, ca, n)
    xb = rng.multivariate_normal(mb, cb, n)
    assert frechet_distance(torch.tensor(xa), torch.tensor(xb)) == pytest.approx(exact, abs=0.02)
    # two samples of one distribution: a small positive floor, of order d / n
    same = frechet_distance(xa[: n // 2], xa[n // 2:])
    assert 0 < same < 50 * d / n
    # a common shift of both sets changes nothing; a relative shift adds |shift|^2
    assert frechet_distance(xa + 5.0, xb + 5.0) == pytest.approx(frechet_distance(xa, xb), rel=1e-9)
    shift = np.array([1.0, 0.0, 0.0])
    assert frechet_distance(xa[: n // 2] + shift, xa[n // 2:]) == pytest.approx(1.0 + same, abs=0.03)


@pytest.mark.parametrize("a, b, match", [
    (torch.zeros(10, 3), torch.zeros(10, 4), "dimension 4"),
    (torch.randn(3, 3), torch.randn(10, 3), "at least d \\+ 1 = 4"),
    (torch.randn(10, 3), torch.full((10, 3), float("nan")), "NaN"),
    (torch.randn(10), torch.randn(10), "shape \\(n, d\\)"),
])
def test_frechet_distance_refuses_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


def test_frechet_gaussians_refuses_mismatched_or_asymmetric_covariances():
    with pytest.raises(ValueError, match="shape \\(2, 2\\)"):
        frechet_distance_gaussians(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance_gaussians(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------- precision and recall
def _pr_brute_force(real, fake, k):
    def radii(x):
        return np.array([np.sort(np.sqrt(((x - p) ** 2).sum(1)))[k] for p in x])  # index 0 is the point itself

    def inside(q, ref, r):
        return np.mean([any(np.sqrt(((ref[j] - p) ** 2).sum()) <= r[j] for j in range(len(ref))) for p in q])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_matches_a_brute_force_loop():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(120, 3)), rng.normal(size=(90, 3)) * 1.5 + 0.5
    got = precision_recall(torch.tensor(real), torch.tensor(fake), k=3, batch_size=32)
    assert got == pytest.approx(_pr_brute_force(real, fake, 3), abs=1e-12)


def test_precision_recall_hand_counted_on_a_line():
    """Real 0, 1, ..., 9 with k = 1: every ball has radius 1 and together they cover [-1, 10].
    Fake 0.5, 1, 8, 8.4, 12: radii 0.5, 0.5, 0.4, 0.4, 3.6, balls covering the real points 0, 1, 8 and 9."""
    real = torch.arange(10.0)[:, None]
    fake = torch.tensor([0.5, 1.0, 8.0, 8.4, 12.0])[:, None]
    assert precision_recall(real, fake, k=1) == pytest.approx((4 / 5, 4 / 10))


def test_precision_recall_of_identical_disjoint_and_half_covering_sets():
    rng = np.random.default_rng(5)
    centres = np.stack([20.0 * np.arange(10), np.zeros(10)], 1)     # ten well-separated 2-D modes

    def draw(modes, n=2000):
        return centres[rng.integers(0, modes, n)] + rng.normal(size=(n, 2))

    real = draw(10)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    p_full, r_full = precision_recall(real, draw(10))                # a second sample of the same distribution
    p_half, r_half = precision_recall(real, draw(5))                 # modes 0-4 only
    assert p_full > 0.9 and r_full > 0.9
    assert p_half > 0.9 and abs(p_half - p_full) < 0.03              # the samples still lie on the data
    assert abs(r_half - 0.5 * r_full) < 0.03                         # half of the data is reached


@pytest.mark.parametrize("kwargs, match", [
    (dict(fake_features=torch.zeros(10, 2)), "dimension 2"), (dict(k=0), "k must be"),
    (dict(real_features=torch.randn(3, 3)), "at least k \\+ 1 = 4"),
])
def test_precision_recall_refuses_bad_arguments(kwargs, match):
    args = dict(real_features=torch.randn(10, 3), fake_features=torch.randn(10, 3), k=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        precision_recall(**args)


# ---------------------------------------------------------------------- label histogram
class _PixelReader(nn.Module):
    """A stand-in classifier: the digit is round(9 * x[0, 0]) of each image (logits: one-hot times 10)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return 10 * nn.functional.one_hot((9 * x[:, 0, 0, 0]).round().long(), 10).float() + self.dummy


def _images_with_labels(labels):
    x = torch.zeros(len(labels), 1, 28, 28)
    x[:, 0, 0, 0] = torch.as_tensor(labels, dtype=torch.float32) / 9
    return x


@pytest.mark.parametrize("labels, kl", [
    (list(range(10)) * 7, 0.0), ([3] * 25, np.log(10)), ([1] * 15 + [7] * 15, np.log(5)),
])
def test_label_histogram_on_known_histograms(labels, kl):
    got = label_histogram(_PixelReader(), _images_with_labels(labels), batch_size=16)
    assert got.counts.tolist() == np.bincount(labels, minlength=10).tolist()
    assert got.kl_to_uniform == pytest.approx(kl, abs=1e-12)


def test_label_histogram_kl_against_scipy_and_flat_images():
    rng = np.random.default_rng(6)
    labels = rng.choice(10, size=500, p=rng.dirichlet(np.ones(10)))
    x = _images_with_labels(labels)
    got = label_histogram(_PixelReader(), x.reshape(len(x), 784))       # flat images are accepted
    p = np.bincount(labels, minlength=10) / len(labels)
    assert got.kl_to_uniform == pytest.approx(scipy.stats.entropy(p, np.full(10, 0.1)), rel=1e-10)


@pytest.mark.parametrize("images, match", [
    (torch.zeros(4, 28, 28), "shape \\(n, 1, 28, 28\\)"), (torch.zeros(4, 1, 32, 32), "shape"),
    (2 * torch.rand(4, 1, 28, 28) - 1, "\\(x \\+ 1\\) / 2"), (255 * torch.rand(4, 1, 28, 28), "divide bytes"),
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "floating point"),
    (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
])
def test_label_histogram_refuses_images_of_the_wrong_shape_or_range(images, match):
    with pytest.raises(ValueError, match=match):
        label_histogram(_PixelReader(), images)
