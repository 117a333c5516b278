"""The library runs with its core dependencies only (torch, numpy, diffusers, tqdm, safetensors): the README's
example and the four schedulers, in a subprocess where the reproduction's dependencies cannot be imported
(sympy is not blocked: torch itself depends on it)."""

import subprocess
import sys
import textwrap

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("scipy", "matplotlib", "accelerate", "transformers", "selenium", "papermill")

SCRIPT = textwrap.dedent(
    f"""
    import sys

    for name in {EXTRAS_ONLY!r}:  # None in sys.modules: import fails, find_spec says not installed
        sys.modules[name] = None
    import torch
    from diffusers import UNet2DModel
    import accelerated_diffusion as ad

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    eps_fn = ad.models.eps_fn(unet)
    schedule = ad.DiscreteSchedule.from_diffusers("linear", 1000, 1e-4, 0.02)
    timesteps = schedule.subsample(5, "leading")
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ad.samplers.LIBRARY_SAMPLERS:
        out = ad.run_sampler(eps_fn, x, name, schedule, timesteps, generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and torch.isfinite(out).all(), name
    for name in ad.samplers.scheduler_classes():
        sch = ad.samplers.scheduler_for(name, num_train_timesteps=1000)
        out = ad.sample_with_scheduler(eps_fn, x, sch, 5, generator=torch.Generator().manual_seed(1))
        assert out.shape == x.shape and torch.isfinite(out).all(), name
    assert all(sys.modules[name] is None for name in {EXTRAS_ONLY!r})
    print("core ok")
    """
)


def test_core_dependencies_are_declared_as_such():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
    assert names == {"torch", "numpy", "tqdm", "diffusers", "safetensors", "huggingface-hub"}


def test_library_runs_without_the_reproduction_dependencies():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "core ok" in res.stdout, res.stderr[-3000:]
