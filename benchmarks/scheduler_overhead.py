r"""How much time does a scheduler's own ``step`` add to a sampling step?

Compares, on the CPU, the median wall time of one ``scheduler.step`` (model output given) with one forward pass of
a ~1.1 M-parameter ``UNet2DModel`` at 32x32, batch 64, and writes the numbers with a description of the machine
to ``data/results/scheduler_benchmark.json``.  Target: a step costs under 2 % of a forward pass.

    .venv/bin/python benchmarks/scheduler_overhead.py            # defaults: 1 thread, 50 steps, 5 repeats

Timing method: ``time.perf_counter`` around whole runs of ``--steps`` steps (per-step time = run time / steps) and
around single forward passes; the median over ``--repeats`` runs is reported, after one warm-up run each.  The
schedulers and the UNet use the same thread count.  On a shared machine the load average is recorded too: the
*ratio* is the number to read, both sides being slowed alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import diffusers
import torch
from diffusers import DDIMScheduler, UNet2DModel
from tqdm import tqdm

import accelerated_diffusion as ad
from accelerated_diffusion.experiments.paths import save_results

SCHEDULERS = {
    "AcceleratedDDIMScheduler": ad.AcceleratedDDIMScheduler,
    "AcceleratedDDPMScheduler": ad.AcceleratedDDPMScheduler,
    "DDIMTypeScheduler": ad.DDIMTypeScheduler,
    "DDPMTypeScheduler": ad.DDPMTypeScheduler,
    "diffusers.DDIMScheduler (reference)": DDIMScheduler,
}


def small_unet() -> UNet2DModel:
    """A 1.11 M-parameter UNet2DModel for 32x32 RGB (channels 32/64/64, one attention level at 16x16)."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def median_time(fn, repeats: int, desc: str) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_unet(unet: UNet2DModel, x: torch.Tensor, repeats: int) -> float:
    t = torch.tensor(500)

    @torch.no_grad()
    def forward():
        unet(x, t)

    return median_time(forward, repeats, "UNet forward")


def time_scheduler(scheduler, x: torch.Tensor, model_output: torch.Tensor, steps: int, repeats: int, desc: str) -> float:
    """Median time of one ``step`` (model output given), from whole runs of ``steps`` steps."""
    gen = torch.Generator().manual_seed(0)

    def run():
        scheduler.set_timesteps(steps)
        y = x
        for t in scheduler.timesteps:
            y = scheduler.step(model_output, t, y, generator=gen).prev_sample

    return median_time(run, repeats, desc) / steps


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> dict:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads for both the UNet and the schedulers")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="steps per timed scheduler run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="scheduler_benchmark", help="name of the JSON file under data/results/")
    args = p.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.steps < 2 or args.repeats < 1:
        p.error("threads, batch and repeats must be >= 1 and steps >= 2")
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    unet = small_unet()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    model_output = torch.randn(x.shape, generator=gen)
    forward_s = time_unet(unet, x, args.repeats)
    rows = {}
    for name, cls in SCHEDULERS.items():
        for check in (True, False):
            if cls is DDIMScheduler and not check:
                continue
            kwargs = {"clip_sample": False} if cls is DDIMScheduler else {"clip_sample": False, "check_finite": check}
            label = name if cls is DDIMScheduler else f"{name} (check_finite={check})"
            step_s = time_scheduler(cls(**kwargs), x, model_output, args.steps, args.repeats, label)
            rows[label] = {"step_ms": round(step_s * 1e3, 4), "fraction_of_forward": round(step_s / forward_s, 5)}
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result = {
        "what": "median time of one scheduler.step vs one UNet2DModel forward pass, CPU",
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "input_shape": list(x.shape),
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "unet_forward_ms": round(forward_s * 1e3, 3),
        "schedulers": rows,
        "target_fraction": 0.02,
        "all_under_target": all(r["fraction_of_forward"] < 0.02 for r in rows.values()),
        "machine": info,
    }
    path = save_results(args.out, result, params=vars(args))
    print(f"UNet forward ({result['unet_parameters']:,} parameters, input {tuple(x.shape)}): {forward_s * 1e3:.1f} ms")
    for label, r in rows.items():
        print(f"{label:55s} {r['step_ms']:8.3f} ms/step  = {100 * r['fraction_of_forward']:.3f} % of a forward pass")
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
