r"""Scale-out generation for the metrics: N samples per sampler and NFE, sharded with ``accelerate``.

Commands::

    accelerated-diffusion generate --model data/fmnist-ddpm --samplers ddim accelerated_ode --nfe 5 10 \
        --num-samples 1000 --out runs/gen                       # one process
    accelerate launch --num_processes 4 -m accelerated_diffusion.experiments.generate --model ... --out runs/gen   # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m accelerated_diffusion.experiments.generate ...   # 2 CPU processes
                                                                                        # on a machine without CUDA
    accelerated-diffusion metrics runs/gen/manifest.json       # Fréchet distance per sampler and NFE

Samplers: any name of the registry :data:`accelerated_diffusion.samplers.SAMPLERS`, run through its one
dispatch :func:`accelerated_diffusion.samplers.run_sampler` on the timesteps ``DiscreteSchedule.subsample(nfe,
spacing)`` followed by ``alpha_bar = 1``: the library's seven samplers on any spacing, and diffusers' own peer
schedulers (``diffusers_dpm_solver_pp_2m`` on any spacing; ``diffusers_unipc_bh2`` only where one of diffusers'
own spacings visits the same timesteps).  The manifest records the timesteps each sampler visited.

On a machine without CUDA, ``--multi_gpu`` starts the processes with torchrun and they form a gloo (CPU)
group; ``accelerate launch --cpu --num_processes 2`` does *not* start two processes in accelerate 1.x (it needs
MPI), it runs one process that does all the work (correct, just not parallel).

Sharding and seeds.  Sample ``i`` has seed ``seed + i`` and its initial noise is
``torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))`` (drawn on the CPU, so the same on any
device).  The seeds are cut into fixed batches of ``--batch-size``; the batches are dealt round-robin to the
processes (batch ``k`` goes to process ``k mod P``).  The stochastic samplers' path noise comes from one
generator per batch, seeded with ``2**32 + `` the batch's first seed.  So every batch is computed exactly as it
would be with one process: the union of the shards equals the single-process result bit for bit on the same
hardware, whatever the number of processes (the batch size, not the process count, is part of the experiment).

Output folder: ``<out>/<sampler>/nfe<NNN>/batch<KKKKK>.pt`` (default; a dict with float32 ``images`` as returned
by the sampler, not clipped, and ``seeds``), ``.npy`` (the images array; seeds in the manifest) or ``.png``
(one uint8 PNG per sample, ``<seed>.png``, clipped to [-1, 1] and quantised); and ``<out>/manifest.json``:
model, image shape, samplers, NFEs, seeds, batch size, spacing, format, device, process count, the files of each
run with their seeds, and timings (seconds per process, images per second).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import samplers
from ..models import eps_fn, load_scheduler_config, load_unet, schedule_from_config
from ..samplers import SAMPLERS, STOCHASTIC
from . import features
from .paths import save_results

__all__ = [
    "DIFFUSERS_SAMPLERS",
    "initial_noise",
    "seed_batches",
    "shard",
    "run_sampler",
    "device_name",
    "save_batch",
    "load_images",
    "generate",
    "merge_manifests",
    "compute_metrics",
    "main",
    "metrics_main",
]

FORMATS = ("pt", "npy", "png")
PATH_NOISE_SEED_OFFSET = 2**32


def initial_noise(seeds, shape) -> torch.Tensor:
    """``(len(seeds), *shape)`` float32: row ``j`` is ``torch.randn(shape)`` from a CPU generator seeded with
    ``seeds[j]`` (independent of the batch it sits in and of the device)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def seed_batches(num_samples: int, seed: int = 0, batch_size: int = 64) -> list[list[int]]:
    """Seeds ``seed .. seed + num_samples - 1`` cut into consecutive batches of ``batch_size`` (last one shorter)."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    seeds = list(range(seed, seed + num_samples))
    return [seeds[i : i + batch_size] for i in range(0, num_samples, batch_size)]


def shard(num_batches: int, process_index: int, num_processes: int) -> list[int]:
    """Indices of the batches process ``process_index`` of ``num_processes`` computes (round-robin, disjoint)."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} outside [0, {num_processes})")
    return list(range(process_index, num_batches, num_processes))


def run_sampler(eps_fn, noise: torch.Tensor, sampler: str, nfe: int, schedule, *, spacing: str = "leading",
                generator=None, progress: bool = False):
    """Run ``sampler`` (a name of :data:`accelerated_diffusion.samplers.SAMPLERS`) from ``noise`` with ``nfe``
    model evaluations on the ``spacing`` grid of the training ``schedule``, through the one dispatch
    :func:`accelerated_diffusion.samplers.run_sampler`; returns ``(images, timesteps)``."""
    ts = schedule.subsample(nfe, spacing).tolist()
    if len(ts) != nfe:
        raise ValueError(f"spacing {spacing!r} gives {len(ts)} timesteps for NFE {nfe}; choose another spacing")
    x, used = samplers.run_sampler(eps_fn, noise, sampler, schedule, ts, generator=generator, progress=progress,
                                   return_nfe=True)
    if used != nfe:
        raise RuntimeError(f"{sampler} used {used} model evaluations, expected {nfe}")
    return x, ts


def device_name(device) -> str:
    """``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu (x86_64, 2 threads)"``."""
    d = torch.device(device)
    if d.type == "cuda":
        return f"{d} ({torch.cuda.get_device_name(d)})"
    return f"{d} ({platform.machine()}, {torch.get_num_threads()} torch threads)"


def save_batch(images: torch.Tensor, seeds: list[int], folder: Path, index: int, fmt: str) -> list[str]:
    """Write one batch in ``fmt`` under ``folder``; returns the file names (relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = images.detach().float().cpu()
    if fmt == "pt":
        torch.save({"images": images, "seeds": list(seeds)}, folder / f"batch{index:05d}.pt")
        return [f"batch{index:05d}.pt"]
    if fmt == "npy":
        np.save(folder / f"batch{index:05d}.npy", images.numpy())
        return [f"batch{index:05d}.npy"]
    if fmt == "png":
        from PIL import Image

        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        names = []
        for s, img in zip(seeds, u8):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{s:08d}.png")
            names.append(f"{s:08d}.png")
        return names
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def load_images(root: Path, files: list[str]) -> torch.Tensor:
    """Load the images of a manifest run (``files`` relative to ``root``) as float32 ``(n, C, H, W)``; PNGs are
    mapped back to ``[-1, 1]``."""
    out = []
    for name in files:
        f = root / name
        if f.suffix == ".pt":
            out.append(torch.load(f, weights_only=True)["images"])
        elif f.suffix == ".npy":
            out.append(torch.from_numpy(np.load(f)))
        elif f.suffix == ".png":
            from PIL import Image

            a = np.asarray(Image.open(f))
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            out.append(torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0)[None])
        else:
            raise ValueError(f"{f}: unknown image file type")
    return torch.cat(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accelerated-diffusion generate", description="Generate N samples per sampler and NFE (sharded with accelerate).")
    p.add_argument("--model", required=True, help="local diffusers folder or hub id (see accelerated_diffusion.models)")
    p.add_argument("--samplers", nargs="+", default=["ddim", "accelerated_ode"], choices=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, default=[5, 10])
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="sample i has seed SEED + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--spacing", default="leading", help="timestep spacing (accelerated_diffusion.schedules.SPACINGS)")
    p.add_argument("--format", default="pt", choices=FORMATS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None, help="default: the device accelerate assigns to this process")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="model dtype")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")
    return p


def generate(args: argparse.Namespace, process_index: int = 0, num_processes: int = 1, device=None) -> dict:
    """This process's share of the work (see module docstring); writes the images and returns its partial
    manifest (runs with this process's files and timings)."""
    device = torch.device(args.device or device or "cpu")
    if device.type == "cpu":  # accelerate says "cpu:0"; a model moved there computes differently (batch size 1)
        device = torch.device("cpu")
    unet = load_unet(args.model, device=device, dtype=getattr(torch, args.dtype))
    schedule = schedule_from_config(load_scheduler_config(args.model))
    fn = eps_fn(unet)
    c, size = unet.config.in_channels, unet.config.sample_size
    shape = (c, *size) if isinstance(size, (list, tuple)) else (c, size, size)
    batches = seed_batches(args.num_samples, args.seed, args.batch_size)
    mine = shard(len(batches), process_index, num_processes)
    runs = []
    for sampler in args.samplers:
        for nfe in args.nfe:
            folder = Path(args.out) / sampler / f"nfe{nfe:03d}"
            files, ts = [], None
            t0 = time.perf_counter()
            for k in tqdm(mine, desc=f"[{process_index}] {sampler} NFE {nfe}", disable=args.no_progress):
                seeds = batches[k]
                noise = initial_noise(seeds, shape).to(device)
                gen = torch.Generator(device).manual_seed(PATH_NOISE_SEED_OFFSET + seeds[0]) if sampler in STOCHASTIC else None
                x, ts = run_sampler(fn, noise, sampler, nfe, schedule, spacing=args.spacing, generator=gen)
                names = save_batch(x, seeds, folder, k, args.format)
                files.append({"batch": k, "seeds": seeds, "files": [f"{sampler}/nfe{nfe:03d}/{n}" for n in names]})
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            n_done = sum(len(f["seeds"]) for f in files)
            runs.append({"sampler": sampler, "nfe": nfe, "timesteps": ts, "batches": files,
                         "seconds": {str(process_index): seconds}, "images": {str(process_index): n_done}})
    return {
        "model": str(args.model),
        "image_shape": list(shape),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "spacing": args.spacing,
        "format": args.format,
        "dtype": args.dtype,
        "num_processes": num_processes,
        "devices": {str(process_index): device_name(device)},
        "runs": runs,
    }


def merge_manifests(parts: list[dict]) -> dict:
    """Merge the partial manifests of all processes: batches sorted, seconds and devices per process, and
    ``images_per_second`` = images / the slowest process's seconds (the wall time of the run)."""
    merged = {k: v for k, v in parts[0].items() if k not in ("runs", "devices")}
    merged["devices"] = {k: v for p in parts for k, v in p["devices"].items()}
    runs = []
    for i, run in enumerate(parts[0]["runs"]):
        batches = sorted((b for p in parts for b in p["runs"][i]["batches"]), key=lambda b: b["batch"])
        seconds = {k: v for p in parts for k, v in p["runs"][i]["seconds"].items()}
        ts = next((p["runs"][i]["timesteps"] for p in parts if p["runs"][i]["timesteps"] is not None), None)
        n = sum(len(b["seeds"]) for b in batches)
        runs.append({"sampler": run["sampler"], "nfe": run["nfe"], "timesteps": ts, "num_images": n,
                     "seconds_per_process": seconds, "images_per_second": n / max(max(seconds.values()), 1e-12),
                     "batches": batches})
    merged["runs"] = runs
    return merged


def _process_state(device: str | None):
    """accelerate's ``PartialState``, on the CPU (gloo) when asked or when launched as several processes on a
    machine without CUDA; raises if the launcher started several processes that do not form one group (each would
    otherwise do all the work)."""
    try:
        from accelerate import PartialState
    except ImportError as e:
        raise ImportError("`accelerated-diffusion generate` needs accelerate: pip install 'accelerate>=0.30'") from e

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = (device is not None and torch.device(device).type == "cpu") or (world > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes != world:
        raise RuntimeError(f"launched as {world} processes but accelerate formed a group of {state.num_processes}")
    return state


def main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion generate`` / ``python -m accelerated_diffusion.experiments.generate`` (module docstring)."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = _process_state(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    part = generate(args, state.process_index, state.num_processes, state.device)
    (out / f"manifest.part{state.process_index}.json").write_text(json.dumps(part, indent=1) + "\n")
    state.wait_for_everyone()
    if state.is_main_process:
        part_files = [out / f"manifest.part{r}.json" for r in range(state.num_processes)]
        manifest = merge_manifests([json.loads(f.read_text()) for f in part_files])
        manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        manifest["command"] = "accelerated-diffusion generate " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for f in part_files:
            f.unlink()
        print(f"wrote {out / 'manifest.json'}")
    state.wait_for_everyone()
    return 0


def compute_metrics(manifest_path, *, reference: str = "test", classifier=None, real_data_baseline: bool = True, progress: bool = True) -> dict:
    """Fréchet distance (:func:`accelerated_diffusion.experiments.features.frechet_distance`) of every run of a manifest
    against the ``reference`` statistics, plus, per sample count ``n``, the FD of ``n`` real training images
    (:func:`~accelerated_diffusion.experiments.features.real_data_frechet_distance`): the small-sample floor.  Samples are
    clipped to ``[-1, 1]`` first, as saving them as images (or diffusers' pipelines) would."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    rows, floors = [], {}
    for run in tqdm(manifest["runs"], desc="metrics", disable=not progress):
        files = [f for b in run["batches"] for f in b["files"]]
        images = load_images(root, files).clamp(-1.0, 1.0)  # as saving them as images would
        fd = features.frechet_distance(images, reference, path=classifier)
        n = len(images)
        if real_data_baseline and n not in floors:
            floors[n] = features.real_data_frechet_distance(n, "train", reference=reference, path=classifier)
        rows.append({"sampler": run["sampler"], "nfe": run["nfe"], "n": n, "fd": fd,
                     "images_per_second": run.get("images_per_second")})
    return {
        "manifest": str(manifest_path),
        "model": manifest["model"],
        "devices": manifest.get("devices"),
        "reference": reference,
        "classifier": str(classifier or features.default_classifier_dir()),
        "real_data_fd": {str(n): v for n, v in floors.items()},
        "results": rows,
    }


def metrics_main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion metrics <manifest>``: write the Fréchet distances to ``--out`` (default
    ``metrics.json`` beside the manifest) and, with ``--results-name``, to ``data/results/``."""
    p = argparse.ArgumentParser(prog="accelerated-diffusion metrics", description="Fréchet distance per sampler and NFE of a generate manifest.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results-name", default=None, help="also save to data/results/<name>.json")
    p.add_argument("--reference", default="test")
    p.add_argument("--classifier", type=Path, default=None, help="classifier folder (default data/fmnist-classifier)")
    p.add_argument("--no-real-baseline", action="store_true", help="skip the FD of n real images")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = compute_metrics(args.manifest, reference=args.reference, classifier=args.classifier, real_data_baseline=not args.no_real_baseline)
    out = args.out or args.manifest.parent / "metrics.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    if args.results_name:
        save_results(args.results_name, res)
    for r in res["results"]:
        print(f"{r['sampler']:>16s}  NFE {r['nfe']:3d}  n {r['n']:6d}  FD {r['fd']:.4g}")
    for n, v in res["real_data_fd"].items():
        print(f"{'real images':>16s}  (floor)  n {int(n):6d}  FD {v:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
