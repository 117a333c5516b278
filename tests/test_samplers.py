"""The public sampling loop: NFE accounting, timesteps, determinism, dtype, and clear errors."""

import math

import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion.samplers import ModelOutputError

TARGET = ad.Gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])
PATH = torch.tensor([0.01, 0.2, 0.6, 0.9, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_nfe_equals_number_of_steps_and_timesteps_are_passed(method, gen):
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return TARGET.eps(x, PATH[len(seen) - 1])

    x = torch.randn(8, 2, dtype=torch.float64, generator=gen)
    out, nfe = ad.sample(eps_fn, x, PATH, method, timesteps=[999, 700, 300, 50], generator=gen, return_nfe=True)
    assert nfe == len(PATH) - 1 == len(seen)
    assert seen == [999, 700, 300, 50]
    assert out.shape == x.shape and out.dtype == x.dtype


def test_default_timesteps_are_the_levels():
    seen = []
    ad.sample(lambda x, t: (seen.append(t), torch.zeros_like(x))[1], torch.zeros(1, 2), PATH, "ddim")
    assert seen == pytest.approx(PATH[:-1].tolist())


@pytest.mark.parametrize("method", sorted(ad.samplers.STOCHASTIC & set(ad.samplers.LIBRARY_SAMPLERS)))
def test_same_seed_gives_bit_identical_samples(method):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
        return ad.sample(TARGET.eps, x, PATH, method, generator=gen)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_float32_in_float32_out_close_to_float64(method):
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out64 = ad.sample(TARGET.eps, x, PATH, method, generator=torch.Generator().manual_seed(1))
    out32 = ad.sample(TARGET.eps, x.float(), PATH, method, generator=torch.Generator().manual_seed(1))
    assert out32.dtype == torch.float32
    if method not in ad.samplers.STOCHASTIC:  # noise draws differ by dtype for the stochastic ones
        assert torch.allclose(out32.double(), out64, atol=1e-4)


@pytest.mark.parametrize(
    "path,match",
    [
        ([0.5, 0.4, 1.0], "strictly increasing"),
        ([0.0, 0.5, 1.0], r"\(0, 1\]"),
        ([0.2, 0.5, 1.1], r"\(0, 1\]"),
        ([0.2, float("nan"), 1.0], "NaN"),
        ([0.5], "at least 2"),
        ([[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_paths_are_rejected(path, match):
    with pytest.raises(ValueError, match=match):
        ad.sample(TARGET.eps, torch.zeros(1, 2), path, "ddim")


def test_unknown_method_and_bad_arguments():
    with pytest.raises(ValueError, match="diffusers' own scheduler"):
        ad.sample(lambda x, t: x, torch.zeros(1, 1), [0.1, 0.5], "diffusers_dpm_solver_pp_2m")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        ad.sample(TARGET.eps, torch.zeros(1, 2), PATH, "euler")
    with pytest.raises(ValueError, match="timesteps has 2 entries"):
        ad.sample(TARGET.eps, torch.zeros(1, 2), PATH, "ddim", timesteps=[1, 2])
    with pytest.raises(TypeError, match="floating-point"):
        ad.sample(TARGET.eps, torch.zeros(1, 2, dtype=torch.int64), PATH, "ddim")


def test_wrong_model_output_shape_names_the_step():
    with pytest.raises(ModelOutputError, match=r"step 0 .*shape \(1,\), expected \(1, 2\)"):
        ad.sample(lambda x, t: torch.zeros(1), torch.zeros(1, 2), PATH, "ddim")


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_nan_from_the_model_names_the_step(method):
    def eps_fn(x, t):
        return torch.full_like(x, math.nan) if t == PATH[2] else torch.zeros_like(x)

    with pytest.raises(ModelOutputError, match=r"step 2 .*NaN or Inf"):
        ad.sample(eps_fn, torch.zeros(1, 2), PATH, method, generator=torch.Generator().manual_seed(0))


def test_progress_bar_runs(capsys):
    ad.sample(TARGET.eps, torch.zeros(1, 2, dtype=torch.float64), PATH, "accelerated_ode", progress=True)
    assert "accelerated_ode" in capsys.readouterr().err


def test_sample_with_scheduler_matches_diffusers_ddim_and_counts_nfe():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    abar = sched.alphas_cumprod.double()
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, nfe = ad.sample_with_scheduler(lambda x, t: TARGET.eps(x, abar[int(t)]), noise, sched, 10, return_nfe=True)
    path = ad.sampling_path(abar, sched.timesteps, 1.0)
    ref = ad.sample(TARGET.eps, noise, path, "ddim")
    assert nfe == 10
    assert torch.allclose(out.double(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        ad.sample_with_scheduler(TARGET.eps, noise, sched)


@pytest.mark.parametrize("method", sorted(ad.samplers.STOCHASTIC & set(ad.samplers.LIBRARY_SAMPLERS)))
def test_per_sample_generators_make_a_sample_independent_of_its_batch(method):
    """With one generator per sample (diffusers' ``randn_tensor`` convention), sample k drawn in a batch of 4 is
    sample k drawn alone."""
    gens = lambda: [torch.Generator().manual_seed(100 + k) for k in range(4)]  # noqa: E731
    x = torch.cat([torch.randn(1, 2, generator=g, dtype=torch.float64) for g in gens()])
    batch = ad.sample(TARGET.eps, x, PATH, method, generator=gens())
    for k in range(4):
        alone = ad.sample(TARGET.eps, x[k : k + 1], PATH, method, generator=[gens()[k]])
        torch.testing.assert_close(batch[k : k + 1], alone, rtol=0, atol=1e-12)
    # and the draws really differ between samples (not one stream shared by all)
    assert not torch.allclose(batch[0], batch[1])
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        ad.sample(TARGET.eps, x, PATH, method, generator=gens()[:3])
    with pytest.raises(TypeError, match="generator"):
        ad.sample(TARGET.eps, x, PATH, method, generator=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_model_output_must_be_real_floating(dtype):
    with pytest.raises(ModelOutputError, match=rf"step 0 .*dtype {dtype}"):
        ad.sample(lambda x, t: torch.zeros(x.shape, dtype=dtype), torch.zeros(1, 2), PATH, "ddim")


def test_run_sampler_checks_timesteps_before_any_model_call():
    schedule = ad.DiscreteSchedule.from_diffusers("linear")

    def never(x, t):
        raise AssertionError("the model must not be called")

    noise = torch.zeros(1, 2)
    for bad, error in (
        ([900.7, 500], TypeError),
        ([1000, 5], ValueError),
        ([-1, 5], ValueError),
        (torch.tensor([900.0, 500.0]), TypeError),
    ):
        for name in ("ddim", "diffusers_dpm_solver_pp_2m"):
            with pytest.raises(error, match="timesteps"):
                ad.run_sampler(never, noise, name, schedule, bad)


@pytest.mark.parametrize("method", ["ddpm_type", "accelerated_sde"])
def test_without_final_noise_the_last_step_is_the_noise_free_update(method):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    run = {}
    for final in (True, False):
        run[final] = ad.sample(
            TARGET.eps, x, PATH, method, generator=torch.Generator().manual_seed(2), final_noise=final
        )
    # the same random stream up to the last step: replay it to get the input of the last step
    gen = torch.Generator().manual_seed(2)
    last_in = ad.sample(TARGET.eps, x, PATH[:-1], method, generator=gen)
    a_t, a_prev = float(PATH[-2]), float(PATH[-1])
    u = ad.updates
    if method == "ddpm_type":
        eps = TARGET.eps(last_in, a_t)
        clean = u.ddpm_type_step(last_in, eps, a_t, a_prev, torch.zeros_like(x))
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        noisy = clean + u.ddpm_type_coefficients(a_t, a_prev)[2] * z
    else:
        x_plus = u.accelerated_sde_perturb(last_in, a_t, a_prev, torch.randn(x.shape, generator=gen, dtype=x.dtype))
        clean = u.accelerated_sde_step(x_plus, TARGET.eps(x_plus, a_t), a_t, a_prev, torch.zeros_like(x))
        noisy = clean + u.accelerated_sde_noise_scale(a_t, a_prev) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    assert torch.equal(run[False], clean)
    assert torch.allclose(run[True], noisy, rtol=0, atol=1e-12)
    assert (run[True] - run[False]).std() > 0.1  # the final noise is not negligible on this path


def test_run_sampler_defaults_to_no_final_noise():
    sched = ad.schedules.DiscreteSchedule.from_diffusers("linear")
    ts = sched.subsample(4, "uniform")
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = lambda y, t: TARGET.eps(y, float(sched.alpha_bars[t]))  # noqa: E731
    for method in sorted(ad.samplers.STOCHASTIC & set(ad.samplers.LIBRARY_SAMPLERS)):
        a = ad.run_sampler(eps, x, method, sched, ts, generator=torch.Generator().manual_seed(3))
        b = ad.sample(
            eps,
            x,
            sched.path(ts),
            method,
            timesteps=ts.tolist(),
            generator=torch.Generator().manual_seed(3),
            final_noise=False,
        )
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------------------
# The registry is the only list (issue 21)
# --------------------------------------------------------------------------------------------------------------
S = ad.samplers
SCHED = ad.DiscreteSchedule.from_diffusers("linear")


def _never(x, t):
    raise AssertionError("the model must not be called")


def test_unknown_sampler_names_raise_in_every_entry_point():
    """One lookup (``spec``) with one message listing the valid names, before any model call."""
    msg = r"unknown sampler 'euler'; expected one of \['ddim', 'ddim_type'"
    noise = torch.zeros(1, 2)
    calls = [
        lambda: S.spec("euler"),
        lambda: S.label("euler"),
        lambda: ad.sample(_never, noise, PATH, "euler"),
        lambda: ad.run_sampler(_never, noise, "euler", SCHED, [999, 500]),
        lambda: S.run_grid(_never, noise, "euler", SCHED, 4),
        lambda: S.table_order(["ddim", "euler"]),
        lambda: S.scheduler_class("euler"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=msg):
            call()


def test_registry_derived_lists():
    names = list(S.SAMPLERS)
    assert all(name == s.name for name, s in S.SAMPLERS.items())
    assert S.LIBRARY_SAMPLERS == tuple(n for n in names if S.spec(n).factory is None)
    assert S.PAPER_SAMPLERS == ("ddim", "ddim_type", "ddpm_type", "accelerated_ode", "accelerated_sde")
    assert S.STOCHASTIC == {n for n in names if S.spec(n).stochastic}
    assert S.DETERMINISTIC == tuple(n for n in S.LIBRARY_SAMPLERS if n not in S.STOCHASTIC)
    order = S.table_order()
    assert sorted(order) == sorted(S.LIBRARY_SAMPLERS)
    # the order of the rate tables and figures (their colours follow it): pinned, the committed results use it
    # (a new sampler may come anywhere; these keep their order)
    pinned = ("ddim_type", "ddim", "accelerated_ode", "dpm_solver_pp_2m", "unipc_bh2", "ddpm_type", "accelerated_sde")
    assert tuple(n for n in order if n in pinned) == pinned
    # the book's safeguarded variants: registered, not paper samplers, last in the tables (the others keep their
    # places and figure colours)
    safeguarded = ("accelerated_ode_lambda", "accelerated_ode_capped")
    assert tuple(n for n in S.LIBRARY_SAMPLERS if S.spec(n).role == "safeguarded") == safeguarded
    assert order[-len(safeguarded) :] == safeguarded and not set(safeguarded) & set(S.PAPER_SAMPLERS)
    assert "safeguarded" in S.ROLES and dict(S.spec("accelerated_ode_capped").options) == {"max_ratio": 2.0}
    markers = [s.marker for s in S.SAMPLERS.values()]
    assert len(set(markers)) == len(markers) and all(markers)
    for s in S.SAMPLERS.values():  # each sampler runs exactly one way
        assert [s.loop is not None, s.transitions is not None, s.factory is not None].count(True) == 1
        assert (s.transitions is not None) == s.stochastic or s.factory is not None
        if s.same_rule_as is not None:
            assert S.spec(s.same_rule_as).runs_on_any_path


def test_scheduler_classes_are_the_registry_s_drop_in_schedulers():
    from diffusers import SchedulerMixin

    exported = [getattr(ad.schedulers, n) for n in ad.schedulers.__all__]
    ours = {c for c in exported if isinstance(c, type) and issubclass(c, SchedulerMixin)}
    mapping = S.scheduler_classes()
    assert set(mapping.values()) == ours and list(mapping) == [n for n in S.SAMPLERS if n in mapping]
    for n, cls in mapping.items():
        assert S.scheduler_class(n) is cls
    assert S.scheduler_class("diffusers_unipc_bh2").__name__ == "UniPCMultistepScheduler"
    assert S.scheduler_class("ddim") is None


def test_sampler_spec_refuses_inconsistent_entries():
    with pytest.raises(ValueError, match="exactly one of loop, transitions and factory"):
        S.SamplerSpec("x", "X", False, "", "peer", "o", loop=S._ddim_loop, factory=ad.peers.unipc_bh2_for_timesteps)
    with pytest.raises(ValueError, match="exactly one of loop, transitions and factory"):
        S.SamplerSpec("x", "X", True, "", "peer", "o")
    with pytest.raises(ValueError, match="stochastic exactly when"):
        S.SamplerSpec("x", "X", True, "", "peer", "o", loop=S._ddim_loop)
    with pytest.raises(ValueError, match="role"):
        S.SamplerSpec("x", "X", False, "", "paper", "o", loop=S._ddim_loop)


def test_options_are_set_through_sample_and_run_sampler():
    """DPM-Solver++(2M)'s ``lower_order_final`` (diffusers' rule: the last of fewer than 15 steps is first order
    unless it is switched off) is set through the public API; an unknown option raises."""
    path = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    default = ad.sample(TARGET.eps, x, path, "dpm_solver_pp_2m")
    assert torch.equal(default, ad.sample(TARGET.eps, x, path, "dpm_solver_pp_2m", options={"lower_order_final": True}))
    second = ad.sample(TARGET.eps, x, path, "dpm_solver_pp_2m", options={"lower_order_final": False})
    # by hand: every step after the first is second order, the last one included
    lv, y, x0_next = [float(a) for a in path], x, None
    for i in range(len(lv) - 1):
        x0 = ad.updates.eps_to_x0(y, TARGET.eps(y, lv[i]), lv[i])
        y = ad.updates.dpm_solver_pp_2m_step(y, x0, lv[i], lv[i + 1], x0_next, lv[i - 1] if i else None)
        x0_next = x0
    assert torch.equal(second, y) and not torch.equal(second, default)
    ts = SCHED.subsample(4, "trailing")
    eps = lambda y, t: TARGET.eps(y, float(SCHED.alpha_bars[t]))  # noqa: E731
    assert torch.equal(
        ad.run_sampler(
            eps, x, "dpm_solver_pp_2m", SCHED, ts, options={"lower_order_final": False}, final_alpha_bar=0.99
        ),
        ad.sample(
            eps,
            x,
            SCHED.path(ts, 0.99),
            "dpm_solver_pp_2m",
            timesteps=ts.tolist(),
            options={"lower_order_final": False},
        ),
    )
    with pytest.raises(ValueError, match=r"'ddim' has no option\(s\) \['lower_order_final'\]"):
        ad.sample(_never, x, path, "ddim", options={"lower_order_final": False})
    with pytest.raises(ValueError, match="has no option"):
        ad.run_sampler(_never, x, "diffusers_dpm_solver_pp_2m", SCHED, ts, options={"lower_order_final": False})


def _with_sampler(monkeypatch, spec):
    """The registry with one more entry (a copy; the module's own is restored after the test)."""
    monkeypatch.setattr(S, "SAMPLERS", {**S.SAMPLERS, spec.name: spec})


def test_a_new_stochastic_sampler_runs_through_its_own_transitions(monkeypatch):
    """A stochastic sampler is its Gaussian half-steps: a new one given the DDPM-type half-step runs exactly as
    ``ddpm_type``; one given the accelerated half-steps exactly as ``accelerated_sde``."""
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for twin, transitions in (
        ("ddpm_type", ad.updates.ddpm_type_transitions),
        ("accelerated_sde", ad.updates.accelerated_sde_transitions),
    ):
        _with_sampler(monkeypatch, S.SamplerSpec("new_sde", "new", True, "test", "peer", "*", transitions=transitions))
        for final in (True, False):
            new = ad.sample(
                TARGET.eps, x, PATH, "new_sde", generator=torch.Generator().manual_seed(1), final_noise=final
            )
            old = ad.sample(TARGET.eps, x, PATH, twin, generator=torch.Generator().manual_seed(1), final_noise=final)
            assert torch.equal(new, old)


def test_run_sampler_dispatches_on_the_spec_not_the_name(monkeypatch):
    """A diffusers scheduler registered with a factory runs through run_sampler with no code naming it."""
    from diffusers import DDIMScheduler

    def factory(betas, timesteps):
        sched = DDIMScheduler(
            trained_betas=betas.tolist(), num_train_timesteps=len(betas), clip_sample=False, set_alpha_to_one=True
        )
        return sched, {"num_inference_steps": len(timesteps)}

    _with_sampler(
        monkeypatch, S.SamplerSpec("diffusers_ddim", "DDIM, diffusers", False, "test", "peer", "*", factory=factory)
    )
    ts = SCHED.subsample(5, "leading")
    eps = lambda y, t: TARGET.eps(y, float(SCHED.alpha_bars[int(t)]))  # noqa: E731
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs, nfe = ad.run_sampler(eps, x, "diffusers_ddim", SCHED, ts, return_nfe=True)
    ours = ad.run_sampler(eps, x, "ddim", SCHED, ts)
    assert nfe == 5 and torch.allclose(theirs.double(), ours, atol=1e-5)
    with pytest.raises(ValueError, match="diffusers' own scheduler"):
        ad.sample(eps, x, PATH, "diffusers_ddim")


def test_run_grid_checks_the_grid_and_batches_like_one_run():
    eps = lambda y, t: TARGET.eps(y, float(SCHED.alpha_bars[int(t)]))  # noqa: E731
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in S.SAMPLERS:
        if name == "diffusers_unipc_bh2":  # visits only its own grids
            continue
        one, ts = S.run_grid(eps, x, name, SCHED, 5, "trailing", generator=torch.Generator().manual_seed(2))
        assert ts == SCHED.subsample(5, "trailing").tolist()
        assert torch.equal(one, ad.run_sampler(eps, x, name, SCHED, ts, generator=torch.Generator().manual_seed(2)))
        # in batches: the batches one after the other, drawing from the one generator in turn
        batched, _ = S.run_grid(
            eps, x, name, SCHED, 5, "trailing", batch_size=3, device="cpu", generator=torch.Generator().manual_seed(2)
        )
        gen = torch.Generator().manual_seed(2)
        by_hand = [ad.run_sampler(eps, x[i : i + 3], name, SCHED, ts, generator=gen) for i in (0, 3, 6)]
        assert torch.equal(batched, torch.cat(by_hand))
        if name not in S.STOCHASTIC:
            assert torch.allclose(batched, one, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="divide 1000"):
        S.run_grid(_never, x, "ddim", SCHED, 7, "uniform")
    with pytest.raises(ValueError, match="2 timesteps given for nfe=3"):
        S.run_grid(_never, x, "ddim", SCHED, 3, timesteps=[999, 500])


# --------------------------------------------------------------------------------------------------------------
# The safeguarded variants of the accelerated ODE: one loop with the coefficient as its argument
# --------------------------------------------------------------------------------------------------------------
def _trailing_path(nfe=5):
    return SCHED.path(SCHED.subsample(nfe, "trailing"), final_alpha_bar=1.0)


def test_capped_sampler_limits():
    """``accelerated_ode_capped``: the paper's sampler (bit for bit) when no ratio exceeds the cap (``max_ratio``
    above every ratio of the path, or inf), exact DDIM at ``max_ratio = 0``, and different from both with the
    default cap on the 5-step ``trailing`` grid (ratios up to 16)."""
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for path in (PATH, _trailing_path()):
        lv = path.tolist()
        top = max((c - b) / (b - a) for a, b, c in zip(lv, lv[1:], lv[2:]))
        paper = ad.sample(TARGET.eps, x, path, "accelerated_ode")
        for rho in (2 * top, math.inf):
            assert torch.equal(
                ad.sample(TARGET.eps, x, path, "accelerated_ode_capped", options={"max_ratio": rho}), paper
            )
        zero = ad.sample(TARGET.eps, x, path, "accelerated_ode_capped", options={"max_ratio": 0.0})
        assert torch.equal(zero, ad.sample(TARGET.eps, x, path, "ddim"))
    path = _trailing_path()
    capped = ad.sample(TARGET.eps, x, path, "accelerated_ode_capped")
    assert not torch.allclose(capped, ad.sample(TARGET.eps, x, path, "accelerated_ode"))
    assert not torch.allclose(capped, ad.sample(TARGET.eps, x, path, "ddim"))
    assert torch.equal(capped, ad.sample(TARGET.eps, x, path, "accelerated_ode_capped", options={"max_ratio": 2.0}))


def test_safeguarded_loops_apply_their_coefficients():
    """Both variants by hand: DDIM first, then ``accelerated_ode_step`` with the variant's coefficient."""
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    path = _trailing_path()
    lv = path.tolist()
    coefficients = {
        "accelerated_ode_lambda": ad.updates.accelerated_ode_lambda_coefficient,
        "accelerated_ode_capped": lambda n, t, p: ad.updates.accelerated_ode_capped_coefficient(n, t, p, 0.7),
    }
    for name, coef in coefficients.items():
        y, eps_next = x, None
        for i in range(len(lv) - 1):
            eps = TARGET.eps(y, lv[i])
            y = ad.updates.accelerated_ode_step(y, eps, lv[i], lv[i + 1], eps_next, lv[i - 1] if i else None, coef)
            eps_next = eps
        opts = {"max_ratio": 0.7} if name == "accelerated_ode_capped" else None
        assert torch.equal(ad.sample(TARGET.eps, x, path, name, options=opts), y), name


@pytest.mark.parametrize("bad,err", [(-1.0, ValueError), (float("nan"), ValueError), ("1.0", TypeError)])
def test_capped_sampler_refuses_a_bad_cap_before_any_model_call(bad, err):
    with pytest.raises(err, match="max_ratio"):
        ad.sample(_never, torch.zeros(1, 2), PATH, "accelerated_ode_capped", options={"max_ratio": bad})
    with pytest.raises(ValueError, match="no option"):
        ad.sample(_never, torch.zeros(1, 2), PATH, "accelerated_ode_lambda", options={"max_ratio": 1.0})
