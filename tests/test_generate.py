"""Scale-out generation (accelerated_diffusion.experiments.generate): seeds, sharding, the manifest, the 2-process run with
accelerate (bit for bit equal to one process), and the metric step."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from accelerated_diffusion import models
from accelerated_diffusion.experiments import generate

from accelerated_diffusion.samplers import SAMPLERS

# diffusers' UniPC takes no custom timesteps and its 'leading' grid differs from DDIM's: tested separately
ALL = [s for s in SAMPLERS if s != "diffusers_unipc_bh2"]
ARGS = ["--samplers", *ALL, "--nfe", "3", "--num-samples", "5", "--batch-size", "2", "--threads", "1", "--no-progress"]


def tiny_model(folder):
    """A randomly initialised 1-channel 28x28 UNet (a few thousand parameters) with the DDPM linear schedule."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unet.save_pretrained(folder)
    cfg = {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "num_train_timesteps": 1000,
    }
    (folder / "scheduler_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert generate.main(["--model", str(tiny), *ARGS, "--out", str(out)]) == 0
    return out


def _images(folder):
    m = json.loads((folder / "manifest.json").read_text())
    return m, {
        (r["sampler"], r["nfe"]): generate.load_images(folder, [f for b in r["batches"] for f in b["files"]])
        for r in m["runs"]
    }


def test_seed_batches_and_shards_partition_the_seeds():
    batches = generate.seed_batches(7, seed=10, batch_size=3)
    assert batches == [[10, 11, 12], [13, 14, 15], [16]]
    for procs in (1, 2, 3, 5):
        parts = [generate.shard(len(batches), r, procs) for r in range(procs)]
        assert sorted(k for p in parts for k in p) == list(range(len(batches)))
    with pytest.raises(ValueError):
        generate.shard(3, 2, 2)
    with pytest.raises(ValueError):
        generate.seed_batches(0)


def test_initial_noise_is_per_sample():
    a = generate.initial_noise([3, 4, 5], (1, 4, 4))
    b = generate.initial_noise([5], (1, 4, 4))
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])


def test_run_sampler_nfe_and_timesteps(tiny):
    unet, sched = models.load_unet(tiny), models.schedule_from_config(models.load_scheduler_config(tiny))
    fn, noise = models.eps_fn(unet), generate.initial_noise([0, 1], (1, 28, 28))
    out = {}
    for s in ALL:
        gen = torch.Generator().manual_seed(0)
        out[s], ts = generate.run_sampler(fn, noise, s, 4, sched, generator=gen)
        assert out[s].shape == noise.shape and torch.isfinite(out[s]).all()
        assert ts == [750, 500, 250, 0]  # every sampler visits the same leading grid
    assert not torch.allclose(out["ddim"], out["accelerated_ode"])
    # diffusers' schedulers agree with the library's float64 implementations of the same rules on the same grid
    assert torch.allclose(out["diffusers_dpm_solver_pp_2m"], out["dpm_solver_pp_2m"], atol=1e-3)
    trailing = {}
    for s in ("unipc_bh2", "diffusers_unipc_bh2"):
        trailing[s], ts = generate.run_sampler(fn, noise, s, 4, sched, spacing="trailing")
        assert ts == [999, 749, 499, 249]
    assert torch.allclose(trailing["unipc_bh2"], trailing["diffusers_unipc_bh2"], atol=1e-3)
    with pytest.raises(ValueError, match="cannot visit the timesteps"):
        generate.run_sampler(fn, noise, "diffusers_unipc_bh2", 4, sched, spacing="leading")
    with pytest.raises(ValueError, match="unknown sampler"):
        generate.run_sampler(fn, noise, "euler", 4, sched)


def test_manifest_of_single_process_run(single):
    m, imgs = _images(single)
    assert m["num_processes"] == 1 and m["image_shape"] == [1, 28, 28]
    assert [(r["sampler"], r["nfe"]) for r in m["runs"]] == [(s, 3) for s in ALL]
    for r in m["runs"]:
        assert [s for b in r["batches"] for s in b["seeds"]] == [0, 1, 2, 3, 4]
        assert r["num_images"] == 5 and r["images_per_second"] > 0
    assert all(x.shape == (5, 1, 28, 28) for x in imgs.values())


def test_two_processes_with_accelerate_equal_one_process_bit_for_bit(tiny, single, tmp_path):
    out = tmp_path / "two"
    with socket.socket() as sock:  # a free port for torchrun's rendezvous (other runs may hold 29500)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # on a machine without CUDA, --multi_gpu starts 2 processes with torchrun and they form a gloo (CPU) group;
    # `--cpu --num_processes 2` would start a single process in accelerate 1.x (it needs MPI for several)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "accelerated_diffusion.experiments.generate",
        "--model",
        str(tiny),
        *ARGS,
        "--out",
        str(out),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    m2, imgs2 = _images(out)
    m1, imgs1 = _images(single)
    assert m2["num_processes"] == 2 and set(m2["devices"]) == {"0", "1"}
    assert all(set(r["seconds_per_process"]) == {"0", "1"} for r in m2["runs"])
    for r1, r2 in zip(m1["runs"], m2["runs"]):
        assert [b["seeds"] for b in r1["batches"]] == [b["seeds"] for b in r2["batches"]]
    assert imgs1.keys() == imgs2.keys()
    for key in imgs1:
        assert torch.equal(imgs1[key], imgs2[key]), key


def test_png_and_npz_round_trip(tmp_path):
    x = torch.linspace(-1.2, 1.2, 2 * 28 * 28).reshape(2, 1, 28, 28)
    for fmt in ("png", "npz"):
        names = generate.save_batch(x, [7, 8], tmp_path / fmt, 0, fmt)
        back, seeds = generate.load_batch(tmp_path / fmt, names)
        expect = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1 if fmt == "png" else x
        assert back.shape == x.shape and torch.allclose(back, expect, atol=1e-6) and seeds == [7, 8]
    assert names == ["batch00000.npz"]


def test_metrics_step(single, tmp_path):
    res = generate.compute_metrics(single / "manifest.json", progress=False)
    assert [(r["sampler"], r["n"]) for r in res["results"]] == [(s, 5) for s in ALL]
    fds = np.array([r["fd"] for r in res["results"]])
    floor = res["real_data_fd"]["5"]
    assert np.isfinite(fds).all() and floor > 0
    # a random UNet makes noise, not clothes: much further from the data than 5 real images are
    assert fds.min() > 2 * floor
    assert (
        generate.metrics_main([str(single / "manifest.json"), "--out", str(tmp_path / "m.json"), "--no-real-baseline"])
        == 0
    )
    saved = json.loads((tmp_path / "m.json").read_text())
    assert [r["fd"] for r in saved["results"]] == pytest.approx(fds.tolist(), rel=1e-9)
