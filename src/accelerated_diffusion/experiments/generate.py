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
generator per batch, seeded with ``2**32 + `` the batch's first seed.  So every batch gets the same inputs as it
would with one process (the batch size, not the process count, is part of the experiment), and the union of the
shards equals the single-process result **bit for bit when every process uses the same number of torch threads
as the single process** (``--threads``), on the same hardware, device type, dtype and software versions.  Without
``--threads`` that is usually not the case on a CPU: ``accelerate launch`` (torchrun) sets ``OMP_NUM_THREADS=1``
in each of several processes, while a single process uses all cores, and the kernels' reductions then round
differently (measured with a small random UNet on a 2-core CPU: up to 1.5e-5 in every run, against exactly 0
with ``--threads 1`` in both, or with ``--threads 2`` for each of two processes against one process with its
default 2 threads; not measured on GPUs).

Output folder: ``<out>/<sampler>/nfe<NNN>/batch<KKKKK>.pt`` (default; a dict with float32 ``images`` as returned
by the sampler, not clipped, and ``seeds``), ``.npz`` (arrays ``images`` and ``seeds``) or ``.png`` (one uint8
PNG per sample, ``<seed>.png``, clipped to [-1, 1] and quantised): every file carries its seeds and is written
atomically.  ``<out>/run.json`` records the settings and the SHA-256 of the model's weights (:func:`weights_sha256`)
before the first image; ``<out>/manifest.json`` is written *last*: model, image shape, samplers, NFEs, seeds,
batch size, spacing, format, device, process count, the files of each run with their seeds and SHA-256, and
timings (seconds per process, images per second).  So a folder without a manifest is visibly incomplete (an
interrupted run), and a manifest covers exactly the image files present; ``metrics`` checks the files, their
seeds and their SHA-256 and refuses anything else.

A run folder holds one run: the main process holds an exclusive lock on ``--out`` while it writes
(:func:`~.paths.folder_lock`, ``<out>/.accelerated-diffusion.lock``), so a second ``generate`` (or ``metrics``)
into the same folder fails at once; ``--resume`` refuses a model whose weights differ from those ``run.json``
records, and on a complete run it only checks the run and changes nothing.  ``metrics`` never writes over the
manifest, ``run.json`` or an image file, nor over a file that is not an earlier metrics file.

Arguments, the samplers on the model's schedule (a dry run on a 1-pixel dummy model, so an incompatible
spacing fails at once) and the output folder are all checked before the model is loaded; a problem is reported in
one line with exit status 2.  A folder that already holds a run is used only with ``--resume`` (same settings:
the batches already on disk with their seeds are kept) or ``--overwrite`` (the run is deleted, manifest first);
a folder holding other files is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import samplers
from ..models import eps_fn, load_scheduler_config, load_unet, schedule_from_config
from ..samplers import SAMPLERS, STOCHASTIC
from ..schedules import SPACINGS
from . import features
from ..integrity import sha256_file
from .paths import (
    LOCK_FILE,
    FolderInUseError,
    atomic_write_bytes,
    atomic_write_text,
    dumps_strict,
    folder_lock,
    save_results,
)

__all__ = [
    "DIFFUSERS_SAMPLERS",
    "initial_noise",
    "seed_batches",
    "shard",
    "run_sampler",
    "device_name",
    "save_batch",
    "load_batch",
    "load_images",
    "UsageError",
    "IncompleteRunError",
    "check_args",
    "check_samplers",
    "check_out",
    "folder_state",
    "prepare_out",
    "files_present",
    "load_model",
    "weights_sha256",
    "check_weights",
    "generate",
    "merge_manifests",
    "check_manifest",
    "check_metrics_out",
    "compute_metrics",
    "main",
    "metrics_main",
]

FORMATS = ("pt", "npz", "png")
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


def run_sampler(
    eps_fn,
    noise: torch.Tensor,
    sampler: str,
    nfe: int,
    schedule,
    *,
    spacing: str = "leading",
    generator=None,
    progress: bool = False,
):
    """Run ``sampler`` (a name of :data:`accelerated_diffusion.samplers.SAMPLERS`) from ``noise`` with ``nfe``
    model evaluations on the ``spacing`` grid of the training ``schedule``, through the library's generation
    wrapper :func:`accelerated_diffusion.samplers.run_grid` (``ValueError`` when the grid does not have ``nfe``
    timesteps, ``RuntimeError`` when the sampler used another number of evaluations); returns
    ``(images, timesteps)``."""
    return samplers.run_grid(eps_fn, noise, sampler, schedule, nfe, spacing, generator=generator, progress=progress)


def device_name(device) -> str:
    """``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu (x86_64, 2 threads)"``."""
    d = torch.device(device)
    if d.type == "cuda":
        return f"{d} ({torch.cuda.get_device_name(d)})"
    return f"{d} ({platform.machine()}, {torch.get_num_threads()} torch threads)"


def _batch_names(seeds: list[int], index: int, fmt: str) -> list[str]:
    """The file names of batch ``index`` in format ``fmt``."""
    if fmt == "png":
        return [f"{s:08d}.png" for s in seeds]
    if fmt in ("pt", "npz"):
        return [f"batch{index:05d}.{fmt}"]
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def save_batch(images: torch.Tensor, seeds: list[int], folder: Path, index: int, fmt: str) -> list[str]:
    """Write one batch in ``fmt`` under ``folder``, each file atomically and carrying its seeds (``pt``/``npz``:
    a ``seeds`` entry beside ``images``; ``png``: the seed is the file name); returns the file names (relative to
    ``folder``)."""
    names = _batch_names(seeds, index, fmt)
    images = images.detach().float().cpu()
    if len(images) != len(seeds):
        raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
    if fmt == "pt":
        buf = io.BytesIO()
        torch.save({"images": images, "seeds": list(seeds)}, buf)
        atomic_write_bytes(folder / names[0], buf.getvalue())
    elif fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, images=images.numpy(), seeds=np.asarray(seeds, dtype=np.int64))
        atomic_write_bytes(folder / names[0], buf.getvalue())
    else:
        from PIL import Image

        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for name, img in zip(names, u8):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="png")
            atomic_write_bytes(folder / name, buf.getvalue())
    return names


def load_batch(root: Path, files: list[str]) -> tuple[torch.Tensor, list[int]]:
    """``(images, seeds)`` of one batch (``files`` relative to ``root``): float32 ``(n, C, H, W)`` (PNGs mapped
    back to ``[-1, 1]``) and the seeds the files carry."""
    images, seeds = [], []
    for name in files:
        f = Path(root) / name
        if f.suffix == ".pt":
            d = torch.load(f, weights_only=True)
            images.append(d["images"])
            seeds += [int(s) for s in d["seeds"]]
        elif f.suffix == ".npz":
            with np.load(f) as d:
                images.append(torch.from_numpy(d["images"]))
                seeds += [int(s) for s in d["seeds"]]
        elif f.suffix == ".png":
            from PIL import Image

            a = np.asarray(Image.open(f))
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            images.append(torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0)[None])
            seeds.append(int(f.stem))
        else:
            raise ValueError(f"{f}: unknown image file type")
    return torch.cat(images), seeds


def load_images(root: Path, files: list[str]) -> torch.Tensor:
    """Load the images of a manifest run (``files`` relative to ``root``) as float32 ``(n, C, H, W)``."""
    return load_batch(root, files)[0]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="accelerated-diffusion generate",
        description="Generate N samples per sampler and NFE (sharded with accelerate).",
    )
    p.add_argument("--model", required=True, help="local diffusers folder or hub id (see accelerated_diffusion.models)")
    p.add_argument("--samplers", nargs="+", default=["ddim", "accelerated_ode"], choices=list(SAMPLERS))
    p.add_argument("--nfe", nargs="+", type=int, default=[5, 10])
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="sample i has seed SEED + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--spacing", default="leading", choices=SPACINGS, help="timestep spacing")
    p.add_argument("--format", default="pt", choices=FORMATS)
    p.add_argument("--out", type=Path, required=True)
    use = p.add_mutually_exclusive_group()
    use.add_argument("--resume", action="store_true", help="finish the run in --out (same settings): keep its batches")
    use.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    p.add_argument("--device", default=None, help="default: the device accelerate assigns to this process")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="model dtype")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true")
    return p


class UsageError(ValueError):
    """A bad command line or output folder, found before any work starts (reported in one line)."""


def run_settings(args: argparse.Namespace) -> dict:
    """What determines the images of a run (recorded in ``run.json``; ``--resume`` must repeat it)."""
    return {
        "model": str(args.model),
        "samplers": list(args.samplers),
        "nfe": list(args.nfe),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "spacing": args.spacing,
        "format": args.format,
        "dtype": args.dtype,
    }


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model: counts, duplicates, the output path; raises :class:`UsageError`."""
    for flag, v in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
        if v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    bad = [n for n in args.nfe if n < 1]
    if bad:
        raise UsageError(f"--nfe values must be >= 1, got {bad}")
    for flag, values in (("--nfe", args.nfe), ("--samplers", args.samplers)):
        if len(set(values)) != len(values):
            raise UsageError(f"{flag} lists a value twice: {values}")
    if args.spacing not in SPACINGS:
        raise UsageError(f"--spacing must be one of {SPACINGS}, got {args.spacing!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot create or write in {parent}")


def check_samplers(schedule, samplers_: list[str], nfes: list[int], spacing: str) -> None:
    """Run every sampler at every NFE on a 1-pixel dummy model (zero noise prediction), so that an incompatible
    spacing or NFE fails before any model is loaded rather than after the first sampler's run."""
    noise = torch.zeros(1, 1, 1, 1)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for sampler in samplers_:
        for nfe in nfes:
            try:
                run_sampler(
                    zero,
                    noise,
                    sampler,
                    nfe,
                    schedule,
                    spacing=spacing,
                    generator=torch.Generator().manual_seed(0) if sampler in STOCHASTIC else None,
                )
            except (ValueError, RuntimeError, IndexError) as e:
                raise UsageError(f"--samplers {sampler} --nfe {nfe} --spacing {spacing}: {e}") from None


# the files and folders `generate` writes into --out; anything else makes the folder someone else's
MANIFEST = "manifest.json"
RUN_FILE = "run.json"
METRICS = "metrics.json"


def _is_ours(p: Path) -> bool:
    n = p.name
    if p.is_dir():
        return n in SAMPLERS
    return (
        n in (MANIFEST, RUN_FILE, METRICS, LOCK_FILE)
        or (n.startswith("manifest.part") and n.endswith(".json"))
        or (n.startswith(".") and n.endswith(".tmp"))
    )


def folder_state(out: Path) -> str:
    """``"new"`` (absent or empty), ``"complete"`` (a manifest: written last), ``"incomplete"`` (generate's files
    without a manifest: an interrupted run) or ``"foreign"`` (files generate did not write)."""
    out = Path(out)
    if not out.exists():
        return "new"
    entries = [p for p in out.iterdir() if p.name != LOCK_FILE]  # a lock alone: a run that stopped before starting
    if not entries:
        return "new"
    if not all(_is_ours(p) for p in entries):
        return "foreign"
    return "complete" if (out / MANIFEST).exists() else "incomplete"


def check_out(out: Path, settings: dict, *, resume: bool, overwrite: bool) -> str:
    """Whether ``out`` may be used (read only; raises :class:`UsageError`): a new folder always; a folder holding
    a run only with ``--overwrite``, or with ``--resume`` when its ``run.json`` has the same settings."""
    state = folder_state(out)
    if state == "new":
        return state
    if state == "foreign":
        raise UsageError(f"--out {out} holds files that generate did not write; choose another (empty) folder")
    if not (resume or overwrite):
        raise UsageError(
            f"--out {out} holds a{'n' if state == 'incomplete' else ''} {state} run: pass --resume to "
            "finish it with the same settings, --overwrite to replace it, or choose another --out"
        )
    if resume:
        try:
            old = json.loads((Path(out) / RUN_FILE).read_text())
        except (OSError, ValueError):
            raise UsageError(f"--resume: {Path(out) / RUN_FILE} is missing or unreadable; use --overwrite") from None
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise UsageError(f"--resume: the run in {out} has other settings (run, now): {diff}; use --overwrite")
    return state


def prepare_out(out: Path, settings: dict, *, overwrite: bool) -> None:
    """Make ``out`` visibly incomplete before any image is written: remove the manifest first (and, with
    ``overwrite``, everything generate wrote, ``metrics.json`` included; a resumed run keeps it), then record the
    settings in ``run.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    if overwrite:
        (out / METRICS).unlink(missing_ok=True)
    for p in out.iterdir():
        if p.is_file() and (p.name.startswith("manifest.part") or p.name.endswith(".tmp")):
            p.unlink()
        elif p.is_dir() and p.name in SAMPLERS:
            if overwrite:
                shutil.rmtree(p)
            else:  # temporary files of writes cut short by a kill
                for f in p.rglob(".*.tmp"):
                    f.unlink()
    atomic_write_text(out / RUN_FILE, dumps_strict(settings, indent=1) + "\n")


def files_present(out: Path) -> set[str]:
    """Every image file under ``out``'s sampler folders, relative to ``out`` (what a manifest must cover)."""
    out = Path(out)
    return {
        str(f.relative_to(out))
        for d in out.iterdir()
        if d.is_dir() and d.name in SAMPLERS
        for f in d.rglob("*")
        if f.is_file()
    }


def _batch_done(out: Path, rel_files: list[str], seeds: list[int]) -> bool:
    """Whether a batch of an interrupted run is already on disk with its seeds (each file is written atomically)."""
    if not all((out / f).is_file() for f in rel_files):
        return False
    try:
        return load_batch(out, rel_files)[1] == seeds
    except Exception:  # an unreadable file is recomputed
        return False


def load_model(args: argparse.Namespace, device) -> tuple:
    """``(unet, schedule, image shape)`` of ``args.model`` on ``device``."""
    unet = load_unet(args.model, device=device, dtype=getattr(torch, args.dtype))
    schedule = schedule_from_config(load_scheduler_config(args.model))
    c, size = unet.config.in_channels, unet.config.sample_size
    shape = (c, *size) if isinstance(size, (list, tuple)) else (c, size, size)
    return unet, schedule, shape


def weights_sha256(unet) -> str:
    """SHA-256 of a model's weights as loaded: every entry of its ``state_dict`` in name order, each as its name,
    dtype, shape and raw bytes (so it does not depend on the file format or the device the model sits on)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(unet.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_weights(out: Path, digest: str) -> None:
    """For ``--resume``: raise :class:`UsageError` unless the ``run.json`` of ``out`` records the weights
    ``digest`` (:func:`weights_sha256`), so that a run never mixes the samples of two models."""
    try:
        old = json.loads((Path(out) / RUN_FILE).read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"--resume: {Path(out) / RUN_FILE} is missing or unreadable; use --overwrite") from None
    if old is None:
        raise UsageError(
            f"--resume: {Path(out) / RUN_FILE} records no weights SHA-256 (an older run), so the model "
            "cannot be checked; use --overwrite"
        )
    if old != digest:
        raise UsageError(
            f"--resume: the run in {out} was made with other weights (SHA-256 {old[:12]}..., now "
            f"{digest[:12]}...): the model changed; use --overwrite or another --out"
        )


def _device(args, device) -> torch.device:
    device = torch.device(args.device or device or "cpu")
    if device.type == "cpu":  # accelerate says "cpu:0"; a model moved there computes differently (batch size 1)
        device = torch.device("cpu")
    return device


def generate(args: argparse.Namespace, process_index: int = 0, num_processes: int = 1, device=None, model=None) -> dict:
    """This process's share of the work (see module docstring); writes the images (skipping, with
    ``args.resume``, batches already on disk with their seeds) and returns its partial manifest (runs with this
    process's files and timings).  ``model``: the ``(unet, schedule, shape)`` of :func:`load_model`."""
    device = _device(args, device)
    unet, schedule, shape = model if model is not None else load_model(args, device)
    fn = eps_fn(unet)
    batches = seed_batches(args.num_samples, args.seed, args.batch_size)
    mine = shard(len(batches), process_index, num_processes)
    out = Path(args.out)
    runs = []
    for sampler in args.samplers:
        for nfe in args.nfe:
            sub = f"{sampler}/nfe{nfe:03d}"
            files, n_done = [], 0
            ts = [int(t) for t in schedule.subsample(nfe, args.spacing)]
            t0 = time.perf_counter()
            for k in tqdm(mine, desc=f"[{process_index}] {sampler} NFE {nfe}", disable=args.no_progress):
                seeds = batches[k]
                rel = [f"{sub}/{n}" for n in _batch_names(seeds, k, args.format)]
                if not (getattr(args, "resume", False) and _batch_done(out, rel, seeds)):
                    noise = initial_noise(seeds, shape).to(device)
                    gen = (
                        torch.Generator(device).manual_seed(PATH_NOISE_SEED_OFFSET + seeds[0])
                        if sampler in STOCHASTIC
                        else None
                    )
                    x, ts = run_sampler(fn, noise, sampler, nfe, schedule, spacing=args.spacing, generator=gen)
                    save_batch(x, seeds, out / sub, k, args.format)
                    n_done += len(seeds)
                files.append({"batch": k, "seeds": seeds, "files": rel, "sha256": [sha256_file(out / f) for f in rel]})
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            runs.append(
                {
                    "sampler": sampler,
                    "nfe": nfe,
                    "timesteps": ts,
                    "batches": files,
                    "seconds": {str(process_index): seconds},
                    "images": {str(process_index): n_done},
                }
            )
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
    """Merge the partial manifests of all processes: batches sorted, seconds, computed images and devices per
    process, and ``images_per_second`` = images computed / the slowest process's seconds (the wall time of the
    run; batches kept by ``--resume`` are not counted)."""
    merged = {k: v for k, v in parts[0].items() if k not in ("runs", "devices")}
    merged["devices"] = {k: v for p in parts for k, v in p["devices"].items()}
    runs = []
    for i, run in enumerate(parts[0]["runs"]):
        batches = sorted((b for p in parts for b in p["runs"][i]["batches"]), key=lambda b: b["batch"])
        seconds = {k: v for p in parts for k, v in p["runs"][i]["seconds"].items()}
        computed = sum(v for p in parts for v in p["runs"][i]["images"].values())
        n = sum(len(b["seeds"]) for b in batches)
        runs.append(
            {
                "sampler": run["sampler"],
                "nfe": run["nfe"],
                "timesteps": run["timesteps"],
                "num_images": n,
                "images_computed": computed,
                "seconds_per_process": seconds,
                "images_per_second": computed / max(max(seconds.values()), 1e-12),
                "batches": batches,
            }
        )
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


def _fail(prog: str, err: BaseException) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def _from_main(state, obj):
    """``obj`` as the main process has it, in every process (one value decided by the main process alone)."""
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion generate`` / ``python -m accelerated_diffusion.experiments.generate`` (module
    docstring).  Everything that can be checked without the model (arguments, the samplers on the model's
    schedule, the output folder, its lock) is checked first, then, with ``--resume``, the model's weights against
    ``run.json``; a problem is reported in one line with exit status 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    settings = run_settings(args)
    try:
        check_args(args)
        schedule = schedule_from_config(load_scheduler_config(args.model))
        check_samplers(schedule, args.samplers, args.nfe, args.spacing)
        if args.threads:
            torch.set_num_threads(args.threads)
        state = _process_state(args.device)
        out = Path(args.out)
        check_out(out, settings, resume=args.resume, overwrite=args.overwrite)  # before the lock creates --out
    except (ValueError, OSError) as e:
        return _fail(prog, e)
    with contextlib.ExitStack() as held:
        found = None
        if state.is_main_process:  # one writer per folder: the lock, then the folder checked again under it
            try:
                held.enter_context(folder_lock(out, "generate"))
                found = ("ok", check_out(out, settings, resume=args.resume, overwrite=args.overwrite))
            except (ValueError, OSError) as e:
                found = ("error", str(e))
        kind, found = _from_main(state, found)
        if kind == "error":
            return _fail(prog, found)
        try:
            device = _device(args, state.device)
            model = load_model(args, device)
            digest = weights_sha256(model[0])
            if args.resume and found != "new":
                check_weights(out, digest)
        except (ValueError, OSError) as e:
            return _fail(prog, e)
        if args.resume and found == "complete":  # nothing to compute: check the run, change nothing
            verdict = None
            if state.is_main_process:
                try:
                    check_manifest(out)
                except (ValueError, OSError) as e:
                    verdict = f"--resume: {out} holds a complete run whose files differ from its manifest ({e}); use --overwrite"
            verdict = _from_main(state, verdict)
            if verdict:
                return _fail(prog, verdict)
            if state.is_main_process:
                print(f"{out} already holds the complete run (manifest checked); nothing to do")
            return 0
        settings["weights_sha256"] = digest
        state.wait_for_everyone()  # every process has checked the folder before the main one changes it
        if state.is_main_process:
            prepare_out(out, settings, overwrite=args.overwrite)
        state.wait_for_everyone()
        part = generate(args, state.process_index, state.num_processes, device, model=model)
        atomic_write_text(out / f"manifest.part{state.process_index}.json", dumps_strict(part, indent=1) + "\n")
        state.wait_for_everyone()
        if state.is_main_process:
            part_files = [out / f"manifest.part{r}.json" for r in range(state.num_processes)]
            manifest = merge_manifests([json.loads(f.read_text()) for f in part_files])
            manifest["weights_sha256"] = digest
            manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            manifest["command"] = "accelerated-diffusion generate " + " ".join(
                shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
            )
            listed = {f for r in manifest["runs"] for b in r["batches"] for f in b["files"]}
            if listed != files_present(out):
                raise RuntimeError(f"{out}: the image files differ from the manifest's; rerun with --overwrite")
            atomic_write_text(out / MANIFEST, dumps_strict(manifest, indent=1) + "\n")  # last: the run is complete
            for f in part_files:
                f.unlink()
            print(f"wrote {out / MANIFEST}")
        state.wait_for_everyone()
    return 0


class IncompleteRunError(ValueError):
    """A generate folder whose manifest is missing or does not match the files (an interrupted or altered run)."""


def check_manifest(manifest_path) -> dict:
    """The manifest of a complete run, after checking that it covers exactly the image files present and that
    every batch file has the SHA-256 and carries the seeds the manifest lists; raises :class:`IncompleteRunError`
    otherwise (a manifest without the SHA-256 of its files, written by an older version, included)."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST
    root = path.parent
    if not path.is_file():
        what = "an interrupted run" if (root / RUN_FILE).exists() else "not a generate folder"
        raise IncompleteRunError(f"{path} does not exist ({what}): finish it with `generate --resume`")
    try:
        manifest = json.loads(path.read_text())
        runs = manifest["runs"]
    except (ValueError, KeyError) as e:
        raise IncompleteRunError(f"{path} is not a readable manifest ({e})") from None
    listed = {f for r in runs for b in r["batches"] for f in b["files"]}
    present = files_present(root)
    if listed != present:
        missing, extra = sorted(listed - present), sorted(present - listed)
        raise IncompleteRunError(
            f"{path} does not match the files in {root}: {len(missing)} listed but missing "
            f"{missing[:3]}, {len(extra)} present but not listed {extra[:3]}"
        )
    for r in runs:
        for b in r["batches"]:
            digests = b.get("sha256")
            if not isinstance(digests, list) or len(digests) != len(b["files"]):
                raise IncompleteRunError(
                    f"{path} records no SHA-256 of the files of batch {b['batch']} (an older "
                    "version's run): the files cannot be checked; regenerate it with --overwrite"
                )
            seeds = load_batch(root, b["files"])[1]
            if seeds != b["seeds"]:
                raise IncompleteRunError(
                    f"{root / b['files'][0]} holds seeds {seeds[:3]}..., the manifest lists "
                    f"{b['seeds'][:3]}...: the folder was changed after the run"
                )
            for name, digest in zip(b["files"], digests):
                if sha256_file(root / name) != digest:
                    raise IncompleteRunError(
                        f"{root / name} differs from the file the run wrote (SHA-256 recorded in "
                        f"{path}): the folder was changed after the run"
                    )
    return manifest


def check_metrics_out(out, manifest_path) -> None:
    """Raise :class:`UsageError` unless ``out`` may receive a metrics file: not a folder, not the manifest, the
    ``run.json``, the lock or an image file of the run in ``manifest_path``'s folder, and, when it exists, an
    earlier metrics file (a JSON object with ``manifest`` and ``results``), never a file of the user's."""
    out, manifest_path = Path(out), Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST
    root, o = manifest_path.parent.resolve(), out.resolve()
    if o.is_dir():
        raise UsageError(f"--out {out} is a folder; name the metrics file (e.g. {out / METRICS})")
    if o.parent == root and (o.name in (MANIFEST, RUN_FILE, LOCK_FILE) or o.name.startswith("manifest.part")):
        raise UsageError(f"--out {out} is a file of the generate run; metrics never writes over it")
    if any(o.is_relative_to(root / s) for s in SAMPLERS):
        raise UsageError(f"--out {out} lies among the run's image files; choose another path")
    if o.exists():
        try:
            old = json.loads(o.read_text())
            ours = isinstance(old, dict) and {"manifest", "results"} <= set(old)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise UsageError(
                f"--out {out} exists and is not a metrics file; it is never overwritten: choose another path"
            )


def compute_metrics(
    manifest_path, *, reference: str = "test", classifier=None, real_data_baseline: bool = True, progress: bool = True
) -> dict:
    """Fréchet distance (:func:`accelerated_diffusion.experiments.features.frechet_distance`) of every run of a manifest
    (checked first by :func:`check_manifest`) against the ``reference`` statistics, plus, per sample count ``n``,
    the FD of ``n`` real training images (:func:`~accelerated_diffusion.experiments.features.real_data_frechet_distance`):
    the small-sample floor.  Samples are clipped to ``[-1, 1]`` first, as saving them as images (or diffusers'
    pipelines) would."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST
    manifest = check_manifest(manifest_path)
    root = manifest_path.parent
    rows, floors = [], {}
    for run in tqdm(manifest["runs"], desc="metrics", disable=not progress):
        files = [f for b in run["batches"] for f in b["files"]]
        images = load_images(root, files).clamp(-1.0, 1.0)  # as saving them as images would
        fd = features.frechet_distance(images, reference, path=classifier)
        n = len(images)
        if real_data_baseline and n not in floors:
            floors[n] = features.real_data_frechet_distance(n, "train", reference=reference, path=classifier)
        rows.append(
            {
                "sampler": run["sampler"],
                "nfe": run["nfe"],
                "n": n,
                "fd": fd,
                "images_per_second": run.get("images_per_second"),
            }
        )
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
    p = argparse.ArgumentParser(
        prog="accelerated-diffusion metrics", description="Fréchet distance per sampler and NFE of a generate manifest."
    )
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results-name", default=None, help="also save to data/results/<name>.json")
    p.add_argument("--reference", default="test")
    p.add_argument("--classifier", type=Path, default=None, help="classifier folder (default data/fmnist-classifier)")
    p.add_argument("--no-real-baseline", action="store_true", help="skip the FD of n real images")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        return _fail(p.prog, UsageError(f"--threads must be >= 1, got {args.threads}"))
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = args.manifest / MANIFEST if args.manifest.is_dir() else args.manifest
    out = args.out or manifest.parent / METRICS
    with contextlib.ExitStack() as held:
        try:  # the output path, the run folder's lock, then the manifest against the files, before any feature
            check_metrics_out(out, manifest)
            run_folder = manifest.is_file() or (manifest.parent / RUN_FILE).is_file()
            if run_folder and out.resolve().parent == manifest.parent.resolve():
                held.enter_context(folder_lock(manifest.parent, "metrics"))  # no generate changes the run meanwhile
            res = compute_metrics(
                args.manifest,
                reference=args.reference,
                classifier=args.classifier,
                real_data_baseline=not args.no_real_baseline,
            )
        except (IncompleteRunError, UsageError, FolderInUseError) as e:
            return _fail(p.prog, e)
        atomic_write_text(out, dumps_strict(res, indent=2) + "\n")
    if args.results_name:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        save_results(args.results_name, res, params=settings)
    for r in res["results"]:
        print(f"{r['sampler']:>16s}  NFE {r['nfe']:3d}  n {r['n']:6d}  FD {r['fd']:.4g}")
    for n, v in res["real_data_fd"].items():
        print(f"{'real images':>16s}  (floor)  n {int(n):6d}  FD {v:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
