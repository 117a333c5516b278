"""The k-diffusion-style sampler functions (:mod:`accelerated_diffusion.k_samplers`): the same samples as the
alpha_bar-path loops on the same levels, DDIM = k-diffusion's ``sample_euler``, a run with k-diffusion's own
wrappers, the registry coverage, and clear errors for bad input.

k-diffusion is a test-only dependency: ``make setup`` installs it with ``pip install --no-deps`` (its ``__init__``
imports clean-fid, CLIP, kornia, scikit-image and torchvision, none of which ``sampling`` and ``external`` use), and
:func:`_load_k_diffusion` imports just those two modules."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types

import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion import k_samplers as ks
from accelerated_diffusion.samplers import LIBRARY_SAMPLERS, spec

F64 = torch.float64
TARGET = ad.GaussianMixture(
    [0.3, 0.7],
    torch.tensor([[-1.0, 0.5, 0.2], [0.8, -0.4, 0.1]], dtype=F64),
    torch.stack([torch.diag(torch.tensor([0.2, 0.1, 0.3], dtype=F64)), 0.05 * torch.eye(3, dtype=F64)]),
)
SCHEDULES = {
    "karras": ks.get_sigmas_karras(7, 0.02, 40.0).double(),
    "uneven": torch.tensor([14.6, 6.0, 5.5, 1.0, 0.3, 0.29, 0.05, 0.0], dtype=F64),
}


def exact_denoiser(target=TARGET, calls=None):
    """The ideal denoiser of ``target`` in k-diffusion's convention: ``D(x, sigma) = x - sigma eps*(x_VP, abar)``
    with ``abar = 1 / (1 + sigma^2)`` and ``x_VP = sqrt(abar) x``."""

    def model(x, sigma, **extra):
        assert sigma.shape == (x.shape[0],) and bool((sigma == sigma[0]).all())
        if calls is not None:
            calls.append((float(sigma[0]), extra))
        s = float(sigma[0])
        a = 1.0 / (1.0 + s * s)
        return x - s * target.eps(x * math.sqrt(a), a)

    return model


def seeded_noise(seed, like):
    """A noise sampler drawing from its own generator, in call order (the loops' ``randn_tensor`` draws)."""
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(like.shape, generator=g, dtype=like.dtype)


def start(sigmas, n=5, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * sigmas[0]


# ---------------------------------------------------------------------------------------------------------------
# (a) the same samples as the loops on the same levels
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", LIBRARY_SAMPLERS)
def test_k_function_computes_the_loop_on_the_alpha_bar_path(name, schedule):
    sigmas = SCHEDULES[schedule]
    x = start(sigmas)
    path = 1.0 / (1.0 + sigmas**2)
    assert float(path[-1]) == 1.0
    stochastic = spec(name).stochastic
    kw = {"noise_sampler": seeded_noise(7, x)} if stochastic else {}
    calls, seen = [], []
    out = ks.K_SAMPLERS[name](exact_denoiser(calls=calls), x, sigmas, callback=seen.append, disable=True, **kw)
    ref = ad.sample(
        TARGET.eps,
        x * torch.sqrt(path[0]),
        path,
        name,
        final_noise=False,
        generator=torch.Generator().manual_seed(7) if stochastic else None,
    )
    assert out.dtype == F64 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    n = len(sigmas) - 1
    assert [c[0] for c in calls] == sigmas[:-1].tolist()  # NFE = len(sigmas) - 1, one call per sigma
    assert [d["i"] for d in seen] == list(range(n))
    assert all(set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"} for d in seen)
    assert [float(d["sigma"]) for d in seen] == sigmas[:-1].tolist()
    if not stochastic:  # the model was evaluated at the callback's x
        torch.testing.assert_close(seen[0]["x"], x, rtol=0, atol=1e-12)


def test_stochastic_samplers_are_seeded_as_in_k_diffusion():
    """Default noise: ``torch.randn_like``, so ``torch.manual_seed`` makes a run reproducible and the draws are
    those of the loop with the global generator."""
    sigmas = SCHEDULES["karras"]
    x = start(sigmas)
    path = 1.0 / (1.0 + sigmas**2)
    for name in LIBRARY_SAMPLERS:
        if not spec(name).stochastic:
            continue
        torch.manual_seed(3)
        a = ks.K_SAMPLERS[name](exact_denoiser(), x, sigmas, disable=True)
        torch.manual_seed(3)
        b = ad.sample(TARGET.eps, x * torch.sqrt(path[0]), path, name, final_noise=False)
        torch.manual_seed(4)
        c = ks.K_SAMPLERS[name](exact_denoiser(), x, sigmas, disable=True)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        assert not torch.allclose(a, c)


def test_noise_sampler_gets_k_diffusions_intervals():
    """One draw per step on ``(sigma_i, sigma_{i+1})`` (as k-diffusion's ancestral samplers); two per step on the
    halves for the accelerated SDE; never a call for the discarded noise of the step to ``sigma = 0``."""
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.0], dtype=F64)
    x = start(sigmas)
    expected = {
        "ddpm_type": [(10.0, 4.0), (4.0, 1.0)],
        "accelerated_sde": [(10.0, 7.0), (7.0, 4.0), (4.0, 2.5), (2.5, 1.0), (1.0, 0.5)],
    }
    assert set(expected) == {n for n in LIBRARY_SAMPLERS if spec(n).stochastic}
    for name, intervals in expected.items():
        got = []

        def noise_sampler(sigma, sigma_next):
            got.append((float(sigma), float(sigma_next)))
            return torch.randn_like(x)

        ks.K_SAMPLERS[name](exact_denoiser(), x, sigmas, disable=True, noise_sampler=noise_sampler)
        assert got == intervals, name


def test_the_loops_noise_hook():
    """``ad.sample(..., noise_sampler=)``, the hook the k-functions use: called with the index of the step under
    way, in the loop's order; refused together with a generator."""
    path = torch.tensor([0.2, 0.5, 1.0], dtype=F64)
    steps = []

    def hook(i, like):
        steps.append(i)
        return torch.zeros_like(like)

    ad.sample(TARGET.eps, torch.zeros(2, 3, dtype=F64), path, "accelerated_sde", noise_sampler=hook)
    assert steps == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="not both"):
        ad.sample(
            TARGET.eps,
            torch.zeros(2, 3, dtype=F64),
            path,
            "ddpm_type",
            noise_sampler=hook,
            generator=torch.Generator().manual_seed(0),
        )


def test_extra_args_reach_the_model():
    sigmas = SCHEDULES["karras"]
    calls = []
    ks.sample_accelerated_ode(
        exact_denoiser(calls=calls), start(sigmas), sigmas, extra_args={"cond": "a"}, disable=True
    )
    assert [c[1] for c in calls] == [{"cond": "a"}] * (len(sigmas) - 1)


# ---------------------------------------------------------------------------------------------------------------
# (b), (c) k-diffusion itself
# ---------------------------------------------------------------------------------------------------------------
def _load_k_diffusion():
    """``(k_diffusion.sampling, k_diffusion.external)`` without running ``k_diffusion/__init__.py``; torchvision,
    which ``k_diffusion.utils`` imports for image conversions only, is stubbed during the import when absent."""
    spec_ = importlib.util.find_spec("k_diffusion")
    if spec_ is None:
        pytest.skip("k-diffusion is not installed (make setup installs it: pip install --no-deps k-diffusion)")
    if "k_diffusion.sampling" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec_.submodule_search_locations)
        sys.modules.setdefault("k_diffusion", pkg)
        stubs = {}
        if importlib.util.find_spec("torchvision") is None:
            for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
                stubs[name] = sys.modules[name] = types.ModuleType(name)
            stubs["torchvision"].transforms = stubs["torchvision.transforms"]
            stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
        try:
            importlib.import_module("k_diffusion.sampling")
            importlib.import_module("k_diffusion.external")
        finally:
            for name in stubs:
                sys.modules.pop(name, None)
    return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]


@pytest.fixture(scope="module")
def kd():
    return _load_k_diffusion()


def test_get_sigmas_karras_is_k_diffusions(kd):
    sampling, _ = kd
    for args in ((5, 0.002, 80.0), (12, 0.0292, 14.6, 5.0)):
        assert torch.equal(ks.get_sigmas_karras(*args), sampling.get_sigmas_karras(*args))


@pytest.mark.parametrize("ours, theirs", [("ddim", "sample_euler"), ("dpm_solver_pp_2m", "sample_dpmpp_2m")])
def test_k_function_equals_k_diffusions_sampler(kd, ours, theirs):
    """DDIM is Euler's method in sigma; DPM-Solver++(2M) is k-diffusion's (first order on the step to 0)."""
    sampling, _ = kd
    for sigmas in SCHEDULES.values():
        x = start(sigmas)
        out = ks.K_SAMPLERS[ours](exact_denoiser(), x, sigmas, disable=True)
        ref = getattr(sampling, theirs)(exact_denoiser(), x, sigmas, disable=True)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


class TinyEps(torch.nn.Module):
    """A tiny epsilon-prediction network ``eps(x, t)`` with a fractional timestep, as k-diffusion passes it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.3 * torch.randn(3, 3, generator=g, dtype=F64))
        self.b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=F64))

    def forward(self, x, t, scale=1.0):
        return scale * torch.tanh(x @ self.w + (t[:, None] / 1000.0) * self.b)


def test_runs_with_k_diffusions_wrappers(kd):
    sampling, external = kd
    alphas_cumprod = ad.DiscreteSchedule.from_diffusers("linear", 1000, 1e-4, 0.02).alpha_bars.to(F64)
    model = external.DiscreteEpsDDPMDenoiser(TinyEps(), alphas_cumprod, quantize=False)
    sigmas = sampling.get_sigmas_karras(6, float(model.sigma_min), float(model.sigma_max)).to(F64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * sigmas[0]
    extra = {"extra_args": {"scale": 0.5}, "disable": True}
    for name, fn in ks.K_SAMPLERS.items():
        seen = []
        kw = {}
        if spec(name).stochastic:  # a Brownian tree reaching the accelerated SDE's last half-step
            kw["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, float(sigmas[-2]) / 2, float(sigmas[0]), seed=0)
        out = fn(model, x, sigmas, callback=seen.append, **extra, **kw)
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), name
        assert len(seen) == len(sigmas) - 1, name
    torch.testing.assert_close(
        ks.sample_ddim(model, x, sigmas, **extra),
        sampling.sample_euler(model, x, sigmas, **extra),
        rtol=1e-10,
        atol=1e-10,
    )
    torch.testing.assert_close(
        ks.sample_dpm_solver_pp_2m(model, x, sigmas, **extra),
        sampling.sample_dpmpp_2m(model, x, sigmas, **extra),
        rtol=1e-10,
        atol=1e-10,
    )


# ---------------------------------------------------------------------------------------------------------------
# (d) the registry, (e) bad input
# ---------------------------------------------------------------------------------------------------------------
def test_every_library_sampler_has_a_k_function():
    assert list(ks.K_SAMPLERS) == list(LIBRARY_SAMPLERS)
    k_params = ["model", "x", "sigmas", "extra_args", "callback", "disable"]
    for name, fn in ks.K_SAMPLERS.items():
        assert fn.__name__ == f"sample_{name}" and getattr(ks, fn.__name__) is fn and fn.__name__ in ks.__all__
        params = inspect.signature(fn).parameters
        expected = k_params + (["noise_sampler"] if spec(name).stochastic else [])
        assert list(params)[: len(expected)] == expected, name
        assert all(params[p].default is None for p in expected[3:]), name
        # any further keyword is one of the sampler's options, with the registry's default
        extra = list(params)[len(expected) :]
        assert all(p in spec(name).options and params[p].default == spec(name).options[p] for p in extra), name
        assert ":func:`~accelerated_diffusion.updates." in fn.__doc__, name  # cites its update rule
    assert list(inspect.signature(ks.sample_accelerated_ode_capped).parameters)[-1] == "max_ratio"


def test_capped_k_function_passes_its_cap():
    """``max_ratio`` reaches the loop: inf is the paper's sampler, 0 exact DDIM (k-diffusion's Euler), the
    default the registry's; a bad cap is refused before the denoiser is called."""
    sigmas = SCHEDULES["uneven"]
    x = start(sigmas)
    model = exact_denoiser()
    capped = ks.sample_accelerated_ode_capped
    assert torch.equal(capped(model, x, sigmas, max_ratio=math.inf), ks.sample_accelerated_ode(model, x, sigmas))
    assert torch.equal(capped(model, x, sigmas, max_ratio=0.0), ks.sample_ddim(model, x, sigmas))
    path = 1.0 / (1.0 + sigmas**2)
    ref = ad.sample(TARGET.eps, x * torch.sqrt(path[0]), path, "accelerated_ode_capped", options={"max_ratio": 0.5})
    torch.testing.assert_close(capped(model, x, sigmas, max_ratio=0.5), ref, rtol=0, atol=1e-10)
    assert not torch.allclose(capped(model, x, sigmas), ks.sample_accelerated_ode(model, x, sigmas))
    calls = []
    with pytest.raises(ValueError, match="max_ratio"):
        capped(exact_denoiser(calls=calls), x, sigmas, max_ratio=-1.0)
    assert calls == []


BAD_SIGMAS = {
    "ascending": ([0.5, 1.0, 2.0, 0.0], "strictly decreasing"),
    "repeated": ([2.0, 1.0, 1.0, 0.0], "strictly decreasing"),
    "not ending at 0": ([2.0, 1.0, 0.5], "end at 0"),
    "ascending, no 0": ([0.0, 1.0, 2.0], "end at 0"),
    "negative": ([2.0, -1.0, 0.0], "positive"),
    "nan": ([2.0, float("nan"), 0.0], "finite"),
    "inf": ([float("inf"), 1.0, 0.0], "finite"),
    "one entry": ([0.0], "at least 2"),
    "2-D": ([[2.0, 1.0, 0.0]], "1-D"),
    "tiny": ([1.0, 1e-9, 0.0], "distinct levels"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGMAS))
def test_bad_sigmas_raise_before_any_model_call(case):
    values, match = BAD_SIGMAS[case]

    def model(x, sigma):
        raise AssertionError("the model was called")

    for name, fn in ks.K_SAMPLERS.items():
        kw = {"noise_sampler": lambda s, sn: pytest.fail("noise drawn")} if spec(name).stochastic else {}
        for sigmas in (values, torch.tensor(values, dtype=F64)):
            with pytest.raises(ValueError, match=match):
                fn(model, torch.zeros(2, 3, dtype=F64), sigmas, disable=True, **kw)


def test_bad_x_and_model_output_raise():
    sigmas = SCHEDULES["karras"]
    with pytest.raises(ValueError, match="NaN or Inf"):
        ks.sample_ddim(exact_denoiser(), torch.full((2, 3), float("nan"), dtype=F64), sigmas, disable=True)
    with pytest.raises(TypeError, match="floating-point"):
        ks.sample_ddim(exact_denoiser(), torch.zeros(2, 3, dtype=torch.long), sigmas, disable=True)
    with pytest.raises(ValueError, match="batch dimension"):
        ks.sample_ddim(exact_denoiser(), torch.tensor(1.0, dtype=F64), sigmas, disable=True)
    with pytest.raises(ad.ModelOutputError, match="step 0.*denoiser returned"):
        ks.sample_ddim(lambda x, s: x[0], start(sigmas), sigmas, disable=True)
    with pytest.raises(ValueError, match="noise_sampler returned"):
        ks.sample_ddpm_type(
            exact_denoiser(), start(sigmas), sigmas, disable=True, noise_sampler=lambda s, sn: torch.zeros(3)
        )
