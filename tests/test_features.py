"""Classifier features and the Fréchet distance (accelerated_diffusion.experiments.features), with the shipped classifier."""

import json

import numpy as np
import pytest
import torch

from accelerated_diffusion.experiments import features
from accelerated_diffusion.experiments.classifier import evaluate_accuracy
from accelerated_diffusion.experiments.features import to_model_range
from accelerated_diffusion.experiments.data import load_fashion_mnist


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def test_split():
    x, y = load_fashion_mnist("test")
    return to_model_range(x), y


@pytest.fixture(scope="module")
def test_feats(test_split):
    return features.extract_features(test_split[0])


def oracle_fd_sqrtm(mu1, s1, mu2, s2):
    """Independent oracle: the textbook FID formula with scipy.linalg.sqrtm (Heusel et al. 2017)."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_fd_matches_sqrtm_oracle_and_is_symmetric():
    rng = np.random.default_rng(0)
    for d in (2, 10, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_cov(rng, d), random_cov(rng, d)
        fd = features.frechet_distance_from_stats(mu1, s1, mu2, s2)
        assert fd == pytest.approx(oracle_fd_sqrtm(mu1, s1, mu2, s2), rel=1e-8)
        assert fd == pytest.approx(features.frechet_distance_from_stats(mu2, s2, mu1, s1), rel=1e-8)
        assert features.frechet_distance_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9 * np.trace(s1))


def test_fd_closed_form_for_commuting_covariances():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 (W2^2 of the Gaussians)."""
    a, b = np.array([1.0, 4.0, 0.0, 9.0]), np.array([0.25, 4.0, 1.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 1.0])
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert features.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_singular_covariances_are_finite_and_nonnegative():
    rng = np.random.default_rng(1)
    d = 128
    s1, s2 = random_cov(rng, d, rank=5), random_cov(rng, d, rank=7)  # fewer samples than features
    fd = features.frechet_distance_from_stats(np.zeros(d), s1, np.zeros(d), s2)
    assert np.isfinite(fd) and fd >= 0
    assert features.frechet_distance_from_stats(np.zeros(d), s1, np.zeros(d), s1) < 1e-8 * np.trace(s1)


def test_fd_input_checks():
    with pytest.raises(ValueError, match="shape mismatch"):
        features.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        features.frechet_distance_from_stats(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        features.feature_statistics(np.zeros((1, 3)))


def test_image_checks():
    ok = torch.zeros(2, 1, 28, 28)
    with pytest.raises(TypeError, match="uint8"):
        features.prepare_images(ok.to(torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        features.prepare_images(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        features.prepare_images(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match=r"expected \[-1, 1\]"):
        features.prepare_images(ok + 255.0)
    assert features.prepare_images(ok + 1.5).max() == 1.0  # clipped as saving an image would
    assert features.prepare_images(torch.zeros(2, 28, 28)).shape == (2, 1, 28, 28)


def test_center_crop_of_padded_images(test_split):
    x = test_split[0][:64]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    assert np.array_equal(features.extract_features(padded), features.extract_features(x))


def test_shipped_classifier_accuracy(test_split, test_feats):
    cfg = json.loads((features.default_classifier_dir() / "config.json").read_text())
    model = features.load_classifier()
    acc = evaluate_accuracy(model, test_split[0][:1000], test_split[1][:1000])
    with torch.no_grad():  # the head on the extracted features gives the same predictions for all 10,000
        pred = model.head(torch.from_numpy(test_feats).float()).argmax(1)
    assert pred[:1000].eq(test_split[1][:1000]).float().mean().item() == pytest.approx(acc, abs=1e-3)
    acc = pred.eq(test_split[1]).float().mean().item()
    assert acc > 0.88
    assert acc == pytest.approx(cfg["test_accuracy"], abs=2e-3)


def test_shipped_reference_stats_are_the_test_features(test_feats):
    mu, sigma = features.load_reference_stats("test")
    mu2, s2 = features.feature_statistics(test_feats)
    assert features.frechet_distance_from_stats(mu2, s2, mu, sigma) < 1e-6 * np.trace(sigma)
    assert np.allclose(mu, mu2, atol=1e-4 * np.abs(mu).max())


def test_fd_grows_with_noise(test_split):
    x = test_split[0][:1000]
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(x.shape, generator=gen)
    fds = [features.frechet_distance(x + s * z) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(fds, fds[1:])), fds
    assert fds[-1] > 10 * fds[0]


def test_train_subsample_fd_small_and_bias_shrinks_with_n():
    """Real training images score close to the test reference; the remaining FD is the small-n bias, which
    shrinks as n grows (and matches the table of the model card)."""
    fd = {n: features.real_data_frechet_distance(n, "train", seed=0) for n in (200, 2000)}
    assert fd[2000] < fd[200]
    cfg = json.loads((features.default_classifier_dir() / "config.json").read_text())
    table = {row["n"]: row["fd_train_images"] for row in cfg["fd_bias_real_images"]}
    assert fd[2000] == pytest.approx(table[2000], rel=1e-3)
    x = to_model_range(load_fashion_mnist("test")[0][:2000])
    noisy = features.frechet_distance(x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    assert fd[2000] < noisy / 5


def test_batched_w2_equals_one_at_a_time_and_the_bootstrap_is_unchanged():
    """gaussian_w2_squared_batch is the per-pair formula for every element; the bootstrap's batched resamples give
    the distances of the resamples computed one at a time (same seeded rows)."""
    from accelerated_diffusion import metrics

    rng = np.random.default_rng(5)
    d = 6
    ref_x = rng.standard_normal((50, d))
    ref = (ref_x.mean(0), np.cov(ref_x, rowvar=False))
    xs = rng.standard_normal((4, 30, d)) * rng.uniform(0.5, 2.0, (4, 1, d)) + 0.3
    means = xs.mean(1)
    covs = np.stack([np.cov(x, rowvar=False) for x in xs])
    batch = metrics.gaussian_w2_squared_batch(means, covs, *ref)
    one = [metrics.gaussian_w2_squared(m, c, *ref) for m, c in zip(means, covs)]
    np.testing.assert_allclose(batch.numpy(), one, rtol=1e-12)
    f = rng.standard_normal((40, d)) + 0.2
    value, boot = features.bootstrap_frechet_distances(f, ref, num_boot=25, seed=9)
    r = np.random.default_rng(9)
    loop = [
        features.frechet_distance_from_stats(*features.feature_statistics(f[r.integers(0, 40, 40)]), *ref)
        for _ in range(25)
    ]
    np.testing.assert_allclose(boot, loop, rtol=1e-10)
    assert value == features.frechet_distance_from_stats(*features.feature_statistics(f), *ref)


def test_classifier_digest_changes_with_the_classifier(tmp_path):
    """What feature caches key on (model_quality --cache): stable for the same files, different after the
    classifier's weights changed."""
    import shutil

    from accelerated_diffusion.experiments import paths

    clf = tmp_path / "clf"
    shutil.copytree(paths.data_dir() / "fmnist-classifier", clf)
    a = features.classifier_digest(clf)
    assert a == features.classifier_digest(clf) == features.classifier_digest() and len(a) == 64
    (clf / "model.safetensors").write_bytes((clf / "model.safetensors").read_bytes() + b" ")
    assert features.classifier_digest(clf) != a
    with pytest.raises(FileNotFoundError, match="no classifier weights"):
        features.classifier_digest(tmp_path / "nowhere")
