"""The two figures of a model folder's card, made from the folder itself: the training loss and learning rate
against the optimiser step (``loss_curve.png``, from ``loss.csv``), and a grid of seeded samples
(``samples.png``).

``python -m accelerated_diffusion.experiments.model_card data/fmnist-ddpm`` (re)writes both, so the card's
figures always show the weights and the log that sit beside them.  The folder is one written by
:func:`.train.export_diffusers`: a diffusers ``UNet2DModel`` with its ``DDPMScheduler`` config, ``loss.csv``
and ``training_state.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..models import eps_fn, load_scheduler_config, load_unet, schedule_from_config
from ..samplers import SAMPLERS, label, run_sampler, spec
from ..schedules import SPACINGS
from .model_quality import check_sampling
from .paths import atomic_write_bytes
from .train import LOSS_LOG

__all__ = ["read_loss_log", "loss_figure", "sample_grid", "samples_figure", "write_figures", "check_args", "main"]

LOSS_FIGURE = "loss_curve.png"
SAMPLES_FIGURE = "samples.png"


def read_loss_log(folder) -> dict[str, np.ndarray]:
    """``loss.csv`` of ``folder`` as arrays ``step``, ``loss``, ``lr`` (one row per logged interval: the mean
    loss over it and the learning rate of its last step).  ``FileNotFoundError`` / ``ValueError`` for a missing,
    empty or malformed log."""
    path = Path(folder) / LOSS_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the folder needs the loss log its export wrote")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"step", "loss", "lr"} <= set(rows[0]):
        raise ValueError(f"{path}: need a header with step, loss, lr and at least one row")
    try:
        log = {k: np.array([float(r[k]) for r in rows]) for k in ("step", "loss", "lr")}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: every row needs numbers in step, loss and lr") from None
    if np.any(np.diff(log["step"]) <= 0):
        raise ValueError(f"{path}: steps must increase")
    return log


def _continued_from(folder) -> int | None:
    """The step at which a continued run (``train --init-from``) took over, from ``training_state.json``."""
    path = Path(folder) / "training_state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        return state.get("config", {}).get("init_step")
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a training state (a JSON object with a config)") from None


def loss_figure(folder, *, title: str | None = None):
    """Training loss (log scale, top) and learning rate (bottom) against the step, from ``folder``'s
    ``loss.csv``; a continued run's first step is marked.  Returns the figure."""
    import matplotlib.pyplot as plt

    log = read_loss_log(folder)
    start = _continued_from(folder)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(6.4, 4.2), sharex=True, height_ratios=(2.2, 1))
    ax.semilogy(log["step"], log["loss"], lw=1.4)
    ax.set_ylabel("loss (mean over\nthe logged steps)")
    ax.set_title(title or f"{Path(folder).name}: epsilon-prediction loss")
    ax_lr.plot(log["step"], log["lr"], lw=1.4, color="C1")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("training step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for a in (ax, ax_lr):
        a.grid(alpha=0.3, which="both")
        if start:
            a.axvline(start, color="0.4", ls="--", lw=1)
    if start:
        ax.annotate(
            f"continued from step {start:,}\n(fresh optimiser)",
            (start, ax.get_ylim()[1]),
            xytext=(-4, -4),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            color="0.3",
        )
    fig.tight_layout()
    return fig


def sample_grid(
    folder, n: int = 64, *, nfe: int = 50, sampler: str = "ddim", spacing: str = "trailing", seed: int = 0
) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` in ``[-1, 1]`` (clipped) of the model in ``folder``: ``sampler`` with
    ``nfe`` steps on ``schedule.subsample(nfe, spacing)`` from noise drawn by ``torch.Generator().manual_seed(
    seed)`` (stochastic samplers draw from the same generator afterwards)."""
    spec(sampler)  # an unknown name raises before the model is loaded
    if n < 1 or nfe < 1:
        raise ValueError(f"need n >= 1 and nfe >= 1, got n={n}, nfe={nfe}")
    unet = load_unet(folder)
    schedule = schedule_from_config(load_scheduler_config(folder))
    size = unet.config.sample_size
    shape = (unet.config.in_channels, size, size) if isinstance(size, int) else (unet.config.in_channels, *size)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *shape), generator=gen)
    with torch.no_grad():
        x = run_sampler(eps_fn(unet), noise, sampler, schedule, schedule.subsample(nfe, spacing), generator=gen)
    return x.clamp(-1.0, 1.0)


def samples_figure(
    folder, n: int = 64, *, nfe: int = 50, sampler: str = "ddim", spacing: str = "trailing", seed: int = 0
):
    """The samples of :func:`sample_grid` as a square-ish grid with a title that states how they were made.
    Returns the figure."""
    import matplotlib.pyplot as plt

    x = sample_grid(folder, n, nfe=nfe, sampler=sampler, spacing=spacing, seed=seed)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    c, h, w = x.shape[1:]
    canvas = torch.full((c, rows * (h + 2) + 2, cols * (w + 2) + 2), -1.0)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + k * (w + 2) : 2 + k * (w + 2) + w] = x[i]
    img = ((canvas + 1) / 2).permute(1, 2, 0).squeeze(-1).numpy()
    fig, ax = plt.subplots(figsize=(5.2, 5.2 * rows / cols + 0.35))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{Path(folder).name}: {n} samples, {label(sampler)}, {nfe} NFE ({spacing}), seed {seed}", fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_figures(
    folder, *, n: int = 64, nfe: int = 50, sampler: str = "ddim", spacing: str = "trailing", seed: int = 0
) -> list[Path]:
    """Write ``loss_curve.png`` and ``samples.png`` into ``folder`` (each atomically); returns their paths.
    The loss figure is drawn first and :func:`sample_grid` checks its arguments before loading the model, so bad
    input fails before the slow sampling, and nothing is written unless both figures were made."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    loss = loss_figure(folder)
    try:
        samples = samples_figure(folder, n, nfe=nfe, sampler=sampler, spacing=spacing, seed=seed)
    except BaseException:
        plt.close(loss)
        raise
    return [_save(loss, folder / LOSS_FIGURE), _save(samples, folder / SAMPLES_FIGURE)]


def check_args(
    folder, *, n: int = 64, nfe: int = 50, sampler: str = "ddim", spacing: str = "trailing", seed: int = 0
) -> None:
    """Every argument of ``model-card`` before the model is loaded: the folder with its loss log
    (:func:`read_loss_log`) and training state, the counts, and the sampler on the folder's ``spacing`` grid of ``nfe`` steps
    (:func:`.model_quality.check_sampling`); raises ``ValueError`` / ``OSError``."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    read_loss_log(folder)
    _continued_from(folder)
    check_sampling(folder, sampler, nfe, spacing, what=f"model folder {folder}")


def main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion model-card FOLDER``: check every argument, then draw; a bad input is reported in
    one line with exit status 2 (no traceback)."""
    p = argparse.ArgumentParser(
        prog="accelerated-diffusion model-card",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("folder", help="an exported model folder (train --export)")
    p.add_argument("--n", type=int, default=64, help="samples in the grid")
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--spacing", default="trailing", choices=list(SPACINGS))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    settings = dict(n=a.n, nfe=a.nfe, sampler=a.sampler, spacing=a.spacing, seed=a.seed)
    try:
        check_args(a.folder, **settings)
        paths = write_figures(a.folder, **settings)
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
