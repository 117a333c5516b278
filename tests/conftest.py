"""Shared fixtures of the unit tests: seeded generators per test (``gen`` for torch, ``rng`` for NumPy), one torch
thread, and random-weight copies of the shipped reference architectures (no downloads). The results redirection is
in the repository's conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from accelerated_diffusion.experiments.paths import data_dir


@pytest.fixture
def gen():
    """A CPU generator seeded per test: a test's inputs do not depend on which tests ran before it."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def rng():
    """A NumPy generator seeded per test (same reason as ``gen``)."""
    return np.random.default_rng(1234)


@pytest.fixture
def one_thread():
    """One torch thread for the duration of a test (bit-identical kernels, polite on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_config(name: str = "ddpm-church-256", kind: str = "unet") -> dict:
    """A shipped config ``data/reference/<name>.<kind>_config.json`` (``kind`` in unet, scheduler); ``name`` may be
    a hub id (``google/ddpm-church-256``)."""
    f = data_dir() / "reference" / f"{name.split('/')[-1]}.{kind}_config.json"
    return json.loads(f.read_text())


def random_unet(config: dict, seed: int = 0):
    """A ``UNet2DModel`` of the architecture in ``config`` with diffusers' default random initialisation, seeded
    (the global torch RNG is left untouched)."""
    from diffusers import UNet2DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**cfg).eval()


def save_random_model(folder, name: str = "ddpm-church-256", seed: int = 0) -> Path:
    """A randomly initialised copy of a reference model in the google/ddpm layout (``config.json``, weights and
    ``scheduler_config.json`` at the root) written to ``folder``; returns the folder."""
    folder = Path(folder)
    random_unet(reference_config(name, "unet"), seed).save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(reference_config(name, "scheduler"), indent=2) + "\n")
    return folder
