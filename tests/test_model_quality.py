"""Model quality at many steps against the real-data floor (accelerated_diffusion.experiments.model_quality)."""

import numpy as np
import pytest
import torch

from accelerated_diffusion.experiments import features, model_quality, train


def test_bootstrap_interval_covers_a_known_distance():
    """Gaussian features whose mean is shifted by 0.5 in each of 4 coordinates: the FD to N(0, I) is 1."""
    rng = np.random.default_rng(0)
    ref = (np.zeros(4), np.eye(4))
    f = rng.standard_normal((4000, 4)) + 0.5
    r = model_quality.bootstrap_frechet_distance(f, ref, replicates=100, seed=1)
    assert r["value"] == pytest.approx(features.frechet_distance_from_stats(f.mean(0), np.cov(f, rowvar=False), *ref))
    lo, hi = r["ci"]
    assert lo < r["value"] < hi and lo < 1.0 < hi
    assert hi - lo < 0.3
    assert r == model_quality.bootstrap_frechet_distance(f, ref, replicates=100, seed=1)  # seeded
    # resampling repeats rows: the resampled distances sit above the value (the small-sample bias)
    assert r["bootstrap_mean"] > r["value"]


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="feature array"):
        model_quality.bootstrap_frechet_distance(np.zeros(5), (np.zeros(1), np.eye(1)))
    with pytest.raises(ValueError, match="replicates"):
        model_quality.bootstrap_frechet_distance(np.zeros((5, 2)), (np.zeros(2), np.eye(2)), replicates=1)


def test_sample_features_same_noises(tmp_path, one_thread):
    """Batch ``b`` starts from noise seeded ``seed + b``: a smaller n gives the first rows of a larger one."""
    torch.manual_seed(0)
    train.build_unet((8, 16)).save_pretrained(tmp_path)
    train.build_scheduler().save_pretrained(tmp_path)
    a = model_quality.sample_features(tmp_path, 5, nfe=2, batch_size=3, progress=False)
    b = model_quality.sample_features(tmp_path, 3, nfe=2, batch_size=3, progress=False)
    assert a.shape == (5, features.FEATURE_DIM) and np.isfinite(a).all()
    np.testing.assert_allclose(a[:3], b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown sampler"):
        model_quality.sample_features(tmp_path, 5, sampler="no_such_sampler")


def test_command_line_needs_step_and_folder():
    with pytest.raises(SystemExit):
        model_quality.main(["--model", "data/fmnist-ddpm"])


def test_one_interval_for_every_frechet_distance():
    """The model-quality interval and the sampler comparison's interval are the same function of the resamples:
    their quantile range with the median moved onto the value."""
    from accelerated_diffusion.experiments import comparison

    rng = np.random.default_rng(3)
    ref = (np.zeros(3), np.eye(3))
    f = rng.standard_normal((300, 3)) + 0.3
    a = model_quality.bootstrap_frechet_distance(f, ref, replicates=50, seed=2)
    b = comparison.frechet_with_ci(f, ref, num_boot=50, seed=2)
    assert a["ci"] == b["ci"] and a["value"] == b["value"]
    value, boot = features.bootstrap_frechet_distances(f, ref, num_boot=50, seed=2)
    lo, med, hi = np.quantile(boot, [0.025, 0.5, 0.975])
    assert a["ci"] == pytest.approx([value - (med - lo), value + (hi - med)])
