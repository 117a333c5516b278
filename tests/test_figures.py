"""The book's figure style and the helpers the derivation and library chapters call (experiments.figures,
experiments.scheduler_checks)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import accelerated_diffusion as ad  # noqa: E402
from accelerated_diffusion import metrics, updates  # noqa: E402
from accelerated_diffusion.experiments import figures, rates  # noqa: E402
from accelerated_diffusion.experiments import scheduler_checks as checks  # noqa: E402


@pytest.fixture(autouse=True)
def _book_style():
    with matplotlib.rc_context():
        figures.book_style()
        yield
    plt.close("all")


def test_book_style_sets_readable_fonts():
    figures.book_style()
    rc = matplotlib.rcParams
    assert rc["figure.dpi"] == 100
    assert min(rc[k] for k in ("xtick.labelsize", "ytick.labelsize", "legend.fontsize")) >= 10
    # at the widest figure allowed, 10-point text stays readable on the phone column
    px = 10 * 100 / 72 * figures.PHONE_COLUMN_PX / (100 * figures.MAX_FIGURE_WIDTH_IN)
    assert px >= figures.MIN_PHONE_TEXT_PX


def test_smallest_text_px_scales_with_width():
    fig, ax = plt.subplots(figsize=(7.0, 3.0))
    ax.set_xlabel("label", fontsize=12)
    ax.set_title("title", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    got = figures.smallest_text_px(fig, column_px=350)
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width
    assert got == pytest.approx(9 * 100 / 72 * 350 / (100 * width))
    assert got < 9 * 100 / 72  # scaled down: the figure is wider than the column
    small, ax = plt.subplots(figsize=(2.0, 2.0))
    ax.set_title("t", fontsize=9)
    assert figures.smallest_text_px(small, column_px=350) == pytest.approx(9 * 100 / 72)  # not scaled up


def _mixture():
    return ad.GaussianMixture(weights=[0.4, 0.6], means=[[-1.0], [1.2]], covs=[[[0.04]], [[0.09]]])


def test_correction_demo_follows_the_exact_flow_of_a_gaussian():
    """On a Gaussian target the path of correction_demo is the exact flow map (rates.exact_flow_map, an
    independent closed form), and the one-step errors are those of the library's steps started on it."""
    target = ad.Gaussian(mean=[0.3], cov=[[0.2]])
    demo = figures.correction_demo(target, sigma_start=3.0, sigma_end=0.2, y_start=0.4, num_steps=5)
    abar, x = demo["alpha_bar"], demo["x"]
    assert np.all(np.diff(demo["sigma"]) < 0) and len(abar) == 6
    for k in range(1, 6):
        A, b = rates.exact_flow_map(target, float(abar[0]), float(abar[k]))
        assert x[k] == pytest.approx(float(A[0, 0] * x[0] + b[0]), abs=1e-8)
    k = 2
    e = demo["eps"]
    step = updates.accelerated_ode_step(
        torch.tensor([x[k]]), torch.tensor([e[k]]), abar[k], abar[k + 1], torch.tensor([e[k - 1]]), abar[k - 1]
    )
    assert demo["one_step_error"]["accelerated_ode"][k - 1] == pytest.approx(abs(float(step) - x[k + 1]))
    assert len(demo["one_step_error"]["ddim"]) == 4


def test_correction_demo_checks_its_input():
    with pytest.raises(ValueError, match="sigma_start > sigma_end"):
        figures.correction_demo(_mixture(), sigma_start=0.1, sigma_end=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        figures.correction_demo(_mixture(), num_steps=1)


@pytest.mark.slow
def test_chapter_figures_are_readable_on_a_phone():
    demo = figures.correction_demo(_mixture(), num_steps=4)
    made = {
        "correction": figures.correction_demo_figure(demo),
        "nfe": figures.error_vs_nfe_figure([10, 20, 40], {"ddim": [1e-1, 5e-2, 2.5e-2]}, "max error"),
        "images": figures.image_rows_figure({"DDIM": np.zeros((8, 4, 4, 1)), "accel.": np.ones((8, 4, 4, 1))}),
        "bench": figures.benchmark_figure(
            {
                "schedulers": {
                    "AcceleratedDDIMScheduler": {"fraction_of_forward": 0.001},
                    "AcceleratedDDPMScheduler": {"fraction_of_forward": 0.002},
                },
                "target_fraction": 0.02,
            }
        ),
    }
    small = {k: round(figures.smallest_text_px(f), 2) for k, f in made.items()}
    assert all(v >= figures.MIN_PHONE_TEXT_PX for v in small.values()), small


def test_error_vs_nfe_figure_checks_lengths():
    with pytest.raises(ValueError, match="2 errors for 3 NFE"):
        figures.error_vs_nfe_figure([1, 2, 3], {"ddim": [1.0, 2.0]}, "e")


def test_coefficient_gap_is_the_difference_of_the_noise_coefficients():
    a_t, h = 0.5, 1e-2
    a_prev = a_t / (1 - h)
    # closed forms: DDIM-type c_eps = -(1 - alpha_t) / (2 sqrt(alpha_t) sqrt(1 - abar_t)), exact DDIM
    # c_eps = sqrt(1 - abar_prev) - sqrt(abar_prev) sqrt((1 - abar_t) / abar_t)
    alpha = a_t / a_prev
    ddim_type = -(1 - alpha) / (2 * math.sqrt(alpha) * math.sqrt(1 - a_t))
    ddim = math.sqrt(1 - a_prev) - math.sqrt(a_prev) * math.sqrt((1 - a_t) / a_t)
    assert figures.coefficient_gap(a_t, h) == pytest.approx(abs(ddim_type - ddim), rel=1e-12)
    # second order in h
    ratio = figures.coefficient_gap(a_t, 1e-3) / figures.coefficient_gap(a_t, 1e-4)
    assert math.log10(ratio) == pytest.approx(2.0, abs=0.01)
    with pytest.raises(ValueError):
        figures.coefficient_gap(0.9, 0.5)


# ----------------------------------------------------------------------------------------------------------------
# scheduler_checks
# ----------------------------------------------------------------------------------------------------------------
def _church_like(cls, **kw):
    return cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **kw)


def test_record_network_inputs_counts_calls_and_unhooks():
    net = torch.nn.Linear(3, 3)
    with checks.record_network_inputs(net) as inputs:
        net(torch.ones(2, 3))
        net(torch.zeros(4, 3))
    assert [t.shape[0] for t in inputs] == [2, 4]
    net(torch.ones(1, 3))
    assert len(inputs) == 2  # the hook is gone after the block


def test_scheduler_eps_uses_the_scheduler_levels():
    target = ad.Gaussian(mean=[0.1, -0.2], cov=[[0.3, 0.0], [0.0, 0.2]])
    sched = _church_like(ad.AcceleratedDDIMScheduler)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = checks.scheduler_eps(target, sched)(x, torch.tensor(700))
    want = target.eps(x, float(sched.alphas_cumprod.double()[700]))
    assert torch.allclose(got, want, atol=1e-12)


def test_output_law_matches_monte_carlo_and_kl_is_zero_for_the_target_itself():
    target = ad.Gaussian(mean=[0.2, -0.1], cov=[[0.25, 0.05], [0.05, 0.15]])
    sched = _church_like(ad.AcceleratedDDIMScheduler, clip_sample=False)
    m, C = checks.output_law(sched, target, 10)
    start = torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = ad.sample_with_scheduler(checks.scheduler_eps(target, sched), start, sched, 10)
    assert torch.allclose(out.mean(0), m, atol=0.02)
    assert torch.allclose(torch.cov(out.T), C, atol=0.02)
    kl = checks.kl_to_target(sched, target, 10)
    assert kl == pytest.approx(metrics.gaussian_kl(target.mean, target.cov, m, C))
    assert 0 <= kl < 0.5  # 10 steps: near the target


def test_start_gain_is_the_linear_part_of_the_stochastic_run():
    target = ad.Gaussian(mean=[0.0, 0.1], cov=[[0.2, 0.0], [0.0, 0.3]])
    sde = _church_like(ad.AcceleratedDDPMScheduler, clip_sample=False)
    A = checks.start_gain(sde, target, 5, noise_seed=3)
    eps_fn = checks.scheduler_eps(target, sde)

    def run(p):
        return ad.sample_with_scheduler(
            eps_fn, p[None] / sde.init_noise_sigma, sde, 5, generator=torch.Generator().manual_seed(3)
        )[0]

    p, q = torch.tensor([0.7, -0.4], dtype=torch.float64), torch.tensor([-0.2, 0.5], dtype=torch.float64)
    assert torch.allclose(run(p) - run(q), A @ (p - q), atol=1e-10)


def test_exact_denoiser_is_the_posterior_mean():
    """For a Gaussian target the ideal denoiser at noise level sigma is E[x0 | x0 + sigma W = x]."""
    target = ad.Gaussian(mean=[0.5], cov=[[0.4]])
    denoiser = checks.exact_denoiser(target)
    x, s = torch.tensor([[1.3]], dtype=torch.float64), 0.8
    got = denoiser(x, torch.tensor([s], dtype=torch.float64))
    want = 0.5 + 0.4 / (0.4 + s**2) * (1.3 - 0.5)
    assert float(got) == pytest.approx(want, rel=1e-10)
