r"""Train a small DDPM on Fashion-MNIST, in the same form as the google/ddpm-* checkpoints.

``python -m accelerated_diffusion.experiments.train --out runs/fmnist-ddpm --steps 20000`` (or ``accelerated-diffusion train``).

What is trained (Ho, Jain, Abbeel 2020, Algorithm 1; the google/ddpm-church-256 set-up, scaled down):

* a diffusers :class:`~diffusers.UNet2DModel` predicting the noise ``eps``;
* the forward process ``X_t = sqrt(alpha_bar_t) X_0 + sqrt(1 - alpha_bar_t) eps`` with the *linear* betas
  ``1e-4 .. 0.02`` over ``T = 1000`` training steps (``DDPMScheduler`` defaults, :func:`~.schedules.betas_for`);
* the loss ``E_{t ~ U{0..999}, eps ~ N(0, I)} || eps_theta(X_t, t) - eps ||^2`` (the "simple" objective, Ho et
  al. eq. 14), images scaled to ``[-1, 1]``;
* AdamW with linear warm-up then constant learning rate, gradient clipping at norm 1, and an exponential moving
  average (EMA) of the weights with diffusers' warm-up of the decay (:func:`ema_decay_at`), which is what gets
  exported (as for google/ddpm-ema-*).

Resolution: the images stay **28 x 28** (no padding to 32). The UNet has three resolution levels and two
down-samplings, 28 -> 14 -> 7, which divide exactly, so nothing is padded and no border pixels are spent on
a constant frame (about 23 % fewer pixels per step than 32 x 32, which matters on CPUs).

Reproducibility and resumption: one :class:`torch.Generator` (seeded by ``--seed``) draws the batch indices,
the time steps and the noise; a checkpoint (``<out>/checkpoint.pt``) holds the model, the EMA, the optimiser, the
step, and that generator's state, so a run resumed from a checkpoint continues *exactly* as the uninterrupted
run would have (up to floating-point non-determinism of multithreaded kernels; with one thread it is identical).
The checkpoint holds only tensors, numbers, strings and plain containers and is read with
``torch.load(weights_only=True)``, so a crafted file cannot run code.  ``--resume`` without a checkpoint is an
error, and the run folder is locked while a command writes in it (:func:`~.paths.folder_lock`: a second ``train``
into the same ``--out`` fails at once).  The loss log is ``<out>/loss.csv`` (step, mean loss over the logging
window, learning rate, seconds elapsed).

``--export DIR`` writes the EMA weights in diffusers format (``config.json`` + ``diffusion_pytorch_model
.safetensors``) and the matching ``scheduler_config.json``, loadable with ``UNet2DModel.from_pretrained(DIR)``
and ``DDPMScheduler.from_pretrained(DIR)``, with ``SHA256SUMS`` of the weights and configs (checked by
:func:`accelerated_diffusion.models.load_unet`) and the export marker; the folder is written beside ``DIR`` and
swapped in as a whole.  ``DIR`` is replaced only when it is new, empty or an earlier export of this command
(:func:`~.paths.check_replaceable`), and it may not be ``--out``, lie inside it or hold it.
All settings (and the checkpoint, the ``--init-from`` folder and the ``--export`` folder) are checked before the
data is loaded: a one-line error and exit status 2; ``--resume`` drops the rows of ``loss.csv`` logged after the
checkpoint it resumes from, so no step is logged twice.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import load_fashion_mnist
from .paths import (
    FolderInUseError,
    atomic_write_bytes,
    atomic_write_text,
    check_replaceable,
    dumps_strict,
    folder_lock,
    replace_folder,
    write_sha256sums,
)
from ..integrity import CHECKED_SUFFIXES, verify_sha256sums
from ..schedules import DiscreteSchedule

__all__ = [
    "TrainConfig",
    "build_unet",
    "build_scheduler",
    "images_to_unit_range",
    "diffusion_loss",
    "ema_update",
    "ema_decay_at",
    "learning_rate",
    "Trainer",
    "truncate_loss_log",
    "export_diffusers",
    "UsageError",
    "check_config",
    "check_architecture",
    "read_checkpoint",
    "check_checkpoint",
    "read_export_state",
    "check_export_dest",
    "run_command",
    "main",
]

CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "loss.csv"
TRAINING_STATE = "training_state.json"
EXPORT_KIND = "ddpm-export"
# what an export folder holds besides the marker and SHA256SUMS (the card and figures: model_card, by hand)
EXPORT_FILES = (
    "config.json",
    "diffusion_pytorch_model.safetensors",
    "scheduler_config.json",
    TRAINING_STATE,
    LOSS_LOG,
    "MODEL_CARD.md",
    "loss_curve.png",
    "samples.png",
)
# an export written before the marker existed (data/fmnist-ddpm): its SHA256SUMS lists these
LEGACY_EXPORT = ("config.json", "diffusion_pytorch_model.safetensors", TRAINING_STATE)
NORM_GROUPS = 8  # GroupNorm groups of build_unet: every level's channels must be a multiple


class UsageError(ValueError):
    """A bad command line, found before any data or model is loaded (``main`` reports it in one line, status 2)."""


def _default_config() -> dict:
    return dict(
        steps=20_000,
        batch_size=64,
        lr=1e-3,
        warmup=200,
        weight_decay=0.0,
        ema_decay=0.999,
        grad_clip=1.0,
        seed=0,
        block_out_channels=[32, 64, 64],
        layers_per_block=1,
        attention=True,
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        checkpoint_every=250,
        log_every=50,
        max_train_images=None,
        threads=None,
        lr_final=None,
        init_from=None,
        init_step=0,
        device="cpu",
    )


class TrainConfig(dict):
    """The run's settings (a plain dict with attribute access, stored in every checkpoint)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def build_unet(block_out_channels=(32, 64, 64), layers_per_block: int = 1, attention: bool = True):
    """A 1-channel 28x28 :class:`~diffusers.UNet2DModel` for eps-prediction.

    Three levels (28, 14, 7); with ``attention`` the lowest-resolution (7 x 7) down and up blocks have
    self-attention, as the google/ddpm checkpoints have at 16 x 16. Time embedding: sinusoidal positional, as in
    DDPM (``time_embedding_type="positional"``, ``flip_sin_to_cos=False``, ``freq_shift=1``, the ddpm-church config).
    """
    from diffusers import UNet2DModel

    check_architecture(block_out_channels, layers_per_block)
    n = len(block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=8,
        attention_head_dim=None,
        flip_sin_to_cos=False,
        freq_shift=1,
        time_embedding_type="positional",
    )


def check_architecture(block_out_channels, layers_per_block: int = 1) -> None:
    """Raise ``ValueError`` unless :func:`build_unet` can build these levels: 2 or 3 of them (28 must be divisible
    by ``2**(levels - 1)``), each with a positive multiple of 8 channels (its GroupNorm has 8 groups), and
    ``layers_per_block >= 1``."""
    n = len(block_out_channels)
    if n < 2:
        raise ValueError(f"block_out_channels needs at least 2 levels, got {list(block_out_channels)}")
    if 28 % (2 ** (n - 1)) != 0:
        raise ValueError(f"{n} levels need 28 divisible by 2**{n - 1}; use 2 or 3 levels for 28x28 images")
    bad = [c for c in block_out_channels if c < 1 or c % NORM_GROUPS]
    if bad:
        raise ValueError(
            f"block_out_channels must be positive multiples of {NORM_GROUPS} (the GroupNorm groups), "
            f"got {list(block_out_channels)}"
        )
    if layers_per_block < 1:
        raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")


def build_scheduler(cfg: dict | None = None):
    """The diffusers :class:`~diffusers.DDPMScheduler` of the training process (linear betas, eps prediction)."""
    from diffusers import DDPMScheduler

    cfg = cfg or _default_config()
    return DDPMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        beta_start=cfg["beta_start"],
        beta_end=cfg["beta_end"],
        beta_schedule="linear",
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
    )


def images_to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``0..255`` -> float32 in ``[-1, 1]`` (``x / 127.5 - 1``, the DDPM convention)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.float() / 127.5 - 1.0


def diffusion_loss(
    model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bars: torch.Tensor
) -> torch.Tensor:
    r"""Ho et al. (2020) eq. 14: ``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2`` (mean).

    ``t`` holds 0-based training indices (diffusers' convention: index ``t`` has ``alpha_bar = alpha_bars[t]``).
    """
    ab = alpha_bars[t].to(x0.dtype).view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    pred = model(xt, t).sample
    return torch.nn.functional.mse_loss(pred, noise)


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter (buffers copied)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ema_decay_at(step: int, ema_decay: float) -> float:
    """EMA decay at optimiser step ``step`` (0-based): ``min(ema_decay, (1 + step) / (10 + step))``, the warm-up
    of diffusers' ``EMAModel``, so that the random initial weights are forgotten early (with a constant 0.999 they
    would still weigh ``0.999 ** 3000 = 5 %`` after 3000 steps)."""
    return min(ema_decay, (1 + step) / (10 + step))


def learning_rate(
    step: int, lr: float, warmup: int, *, start: int = 0, steps: int | None = None, lr_final: float | None = None
) -> float:
    """Linear warm-up over ``warmup`` steps from ``start`` to ``lr``, then constant (as in DDPM's training), or,
    with ``lr_final``, a cosine decay from ``lr`` at ``start`` to ``lr_final`` at ``steps``:
    ``lr_final + (lr - lr_final) * (1 + cos(pi * (step - start) / (steps - start))) / 2``."""
    k = step - start
    base = lr
    if lr_final is not None and steps is not None and steps > start:
        progress = min(max(k / (steps - start), 0.0), 1.0)
        base = lr_final + (lr - lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * min(1.0, (k + 1) / max(warmup, 1))


class Trainer:
    """The training state (model, EMA, optimiser, generator, step) with checkpoint save/load."""

    def __init__(self, cfg: dict, out: str | os.PathLike, images: torch.Tensor | None = None):
        self.cfg = TrainConfig({**_default_config(), **cfg})
        self.out = Path(out)
        if images is None:
            images, _ = load_fashion_mnist("train")
        if self.cfg.max_train_images:
            images = images[: self.cfg.max_train_images]
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images of shape (n, 1, 28, 28), got {tuple(images.shape)}")
        self.device = torch.device(self.cfg.device)
        self.data = images_to_unit_range(images).to(self.device)
        torch.manual_seed(self.cfg.seed)  # the initial weights (drawn on the CPU, so the same on every device)
        self.model = build_unet(self.cfg.block_out_channels, self.cfg.layers_per_block, self.cfg.attention).to(
            self.device
        )
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        sched = DiscreteSchedule.from_diffusers(
            "linear", self.cfg.num_train_timesteps, self.cfg.beta_start, self.cfg.beta_end
        )
        self.alpha_bars = sched.alpha_bars.to(torch.float32).to(self.device)
        self.step = 0
        self.elapsed = 0.0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def state_dict(self) -> dict:
        return dict(
            cfg=dict(self.cfg),
            step=self.step,
            elapsed=self.elapsed,
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            opt=self.opt.state_dict(),
            gen=self.gen.get_state(),
        )

    def save_checkpoint(self) -> Path:
        """Atomically write ``<out>/checkpoint.pt``."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return atomic_write_bytes(self.out / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self, path: str | os.PathLike | dict | None = None) -> None:
        """Restore everything from a checkpoint (a path, default ``<out>/checkpoint.pt``, read with
        :func:`read_checkpoint`, or its already read dict); its model settings must match this run's
        (:func:`check_checkpoint`)."""
        if isinstance(path, dict):
            st, path = path, self.out / CHECKPOINT
        else:
            path = Path(path) if path else self.out / CHECKPOINT
            st = read_checkpoint(path)
        check_checkpoint(st, self.cfg, path)
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.gen.set_state(st["gen"].cpu())
        self.step = st["step"]
        self.elapsed = st["elapsed"]
        for k in ("init_from", "init_step"):  # a run started from an export keeps its origin
            self.cfg[k] = st["cfg"].get(k, self.cfg[k])

    def init_from_export(self, folder: str | os.PathLike) -> None:
        """Start from an exported model (:func:`export_diffusers`): its EMA weights become both the training
        weights and the EMA, the step count continues from its ``training_state.json``, its loss log is carried
        over; the optimiser starts fresh (exports hold no optimiser state), with the learning-rate warm-up counted
        from that step, and the generator is re-seeded with ``seed + 1 + step`` (a new stream of batches)."""
        from diffusers import UNet2DModel

        folder = Path(folder)
        state = read_export_state(folder, self.cfg)
        weights = {k: v.to(self.device) for k, v in UNet2DModel.from_pretrained(folder).state_dict().items()}
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed_s"])
        self.cfg["init_from"] = str(folder)
        self.cfg["init_step"] = self.step
        self.gen.manual_seed(self.cfg.seed + 1 + self.step)
        self.out.mkdir(parents=True, exist_ok=True)
        if (folder / LOSS_LOG).exists():
            shutil.copyfile(folder / LOSS_LOG, self.out / LOSS_LOG)
            truncate_loss_log(self.out / LOSS_LOG, self.step)

    def train_step(self) -> float:
        """One optimiser step on a fresh random batch; returns the loss."""
        c = self.cfg
        # batches, time steps and noise come from the CPU generator, so a run is the same draw on every device
        idx = torch.randint(0, len(self.data), (c.batch_size,), generator=self.gen)
        t = torch.randint(0, c.num_train_timesteps, (c.batch_size,), generator=self.gen)
        noise = torch.randn((c.batch_size, *self.data.shape[1:]), generator=self.gen).to(self.device)
        x0 = self.data[idx.to(self.device)]
        t = t.to(self.device)
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(self.step, c.lr, c.warmup, start=c.init_step, steps=c.steps, lr_final=c.lr_final)
        loss = diffusion_loss(self.model, x0, t, noise, self.alpha_bars)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        ema_update(self.ema, self.model, ema_decay_at(self.step, c.ema_decay))
        self.step += 1
        return loss.item()

    def run(self, steps: int | None = None, progress: bool = True, time_limit_s: float | None = None) -> list[float]:
        """Train until ``steps`` (default ``cfg.steps``) in total, checkpointing and logging; returns the losses.

        ``time_limit_s`` stops early (with a checkpoint) once this call has run that long; the learning rate is
        constant after warm-up, so a run stopped at step ``n`` equals a run asked for ``--steps n``."""
        c = self.cfg
        started = time.perf_counter()
        target = c.steps if steps is None else steps
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / LOSS_LOG
        new_log = not log_path.exists() or self.step == 0
        if new_log:
            atomic_write_text(log_path, "step,loss,lr,elapsed_s\r\n")
        else:
            truncate_loss_log(log_path, self.step)
        log = open(log_path, "a", newline="")
        writer = csv.writer(log)
        losses, window = [], []
        t0 = time.perf_counter() - self.elapsed
        bar = tqdm(total=target, initial=self.step, desc="train DDPM", disable=not progress, dynamic_ncols=True)
        try:
            while self.step < target:
                loss = self.train_step()
                losses.append(loss)
                window.append(loss)
                bar.update(1)
                self.elapsed = time.perf_counter() - t0
                if self.step % c.log_every == 0 or self.step == target:
                    writer.writerow(
                        [
                            self.step,
                            f"{sum(window) / len(window):.6f}",
                            f"{self.opt.param_groups[0]['lr']:.3g}",
                            f"{self.elapsed:.1f}",
                        ]
                    )
                    log.flush()
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                    window = []
                out_of_time = time_limit_s is not None and time.perf_counter() - started > time_limit_s
                if self.step % c.checkpoint_every == 0 or self.step == target or out_of_time:
                    self.save_checkpoint()
                if out_of_time and window:  # the partial logging window (nothing if this step was just logged)
                    writer.writerow(
                        [
                            self.step,
                            f"{sum(window) / len(window):.6f}",
                            f"{self.opt.param_groups[0]['lr']:.3g}",
                            f"{self.elapsed:.1f}",
                        ]
                    )
                if out_of_time:
                    print(f"time limit reached: stopped at step {self.step}")
                    break
        finally:
            bar.close()
            log.close()
        return losses


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def read_checkpoint(path) -> dict:
    """The checkpoint at ``path``, read with ``torch.load(weights_only=True)`` (tensors, numbers, strings and plain
    containers only: a file that would run code when unpickled is refused); raises :class:`UsageError` for a
    missing or unreadable file, or one without the entries a checkpoint holds."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors of any type
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path} is not a checkpoint that can be loaded safely (weights only): {first}") from None
    need = {"cfg", "step", "elapsed", "model", "ema", "opt", "gen"}
    if not isinstance(st, dict) or not need <= set(st) or not isinstance(st["cfg"], dict):
        raise UsageError(f"{path} is not a checkpoint of this command (it needs the entries {sorted(need)})")
    return st


def check_checkpoint(st: dict, cfg: dict, path="checkpoint") -> None:
    """Raise :class:`UsageError` when the checkpoint ``st`` was made with other network, seed or batch settings
    than ``cfg`` (resuming it would not continue the same run)."""
    keys = ("block_out_channels", "layers_per_block", "attention", "seed", "batch_size")
    mismatch = {k: (st["cfg"].get(k), cfg[k]) for k in keys if _norm(st["cfg"].get(k)) != _norm(cfg[k])}
    if mismatch:
        raise UsageError(f"checkpoint {path} was made with different settings (checkpoint, now): {mismatch}")


def read_export_state(folder, cfg: dict) -> dict:
    """The ``training_state.json`` of an export to start from (``--init-from``), after checking the folder's
    ``SHA256SUMS``, that its network settings are ``cfg``'s and that ``cfg["steps"]`` exceeds its step; raises
    :class:`UsageError` naming the problem."""
    import json

    folder = Path(folder)
    state_path = folder / TRAINING_STATE
    if not folder.is_dir():
        raise UsageError(f"--init-from: {folder} does not exist or is not a folder")
    if not state_path.is_file():
        raise UsageError(f"--init-from: {folder} has no {TRAINING_STATE} (not an export of this command)")
    try:
        verify_sha256sums(folder)
        state = json.loads(state_path.read_text())
        config, step = state["config"], int(state["step"])
        float(state["elapsed_s"])
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--init-from: {folder}: {err}") from None
    mismatch = {
        k: (config.get(k), cfg[k])
        for k in ("block_out_channels", "layers_per_block", "attention")
        if _norm(config.get(k)) != _norm(cfg[k])
    }
    if mismatch:
        raise UsageError(f"--init-from: {folder} was trained with different settings (export, now): {mismatch}")
    if step >= cfg["steps"]:
        raise UsageError(f"--init-from: {folder} is at step {step}; --steps {cfg['steps']} must exceed it")
    return state


def truncate_loss_log(path: Path, step: int) -> None:
    """Drop the rows of the loss log logged after ``step`` (those of an interrupted run after its last checkpoint,
    which a resumed run logs again), atomically; the header stays."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
    if len(kept) != len(rows):
        buf = io.StringIO(newline="")
        csv.writer(buf).writerows(kept)
        atomic_write_text(path, buf.getvalue())


def check_export_dest(dest, out=None) -> None:
    """Raise :class:`UsageError` when ``dest`` is the run folder ``out``, lies inside it or holds it (replacing it
    would delete the checkpoint), and ``FileExistsError`` unless ``dest`` is new, empty or an earlier export of this
    command holding nothing else (:func:`~.paths.check_replaceable`)."""
    dest = Path(dest)
    if out is not None:
        d, o = dest.resolve(), Path(out).resolve()
        if d == o or d.is_relative_to(o) or o.is_relative_to(d):
            rel = "is" if d == o else "is inside" if d.is_relative_to(o) else "holds"
            raise UsageError(f"--export {dest} {rel} the run folder --out {out}; export to a folder of its own")
    check_replaceable(dest, EXPORT_KIND, EXPORT_FILES, LEGACY_EXPORT)


def export_diffusers(trainer: Trainer, dest: str | os.PathLike, *, use_ema: bool = True) -> Path:
    """Save the (EMA) UNet with ``save_pretrained`` (safetensors) and the DDPMScheduler config to ``dest``,
    plus ``training_state.json`` (step, elapsed seconds, settings), a copy of the loss log for the model card, the
    export marker and ``SHA256SUMS`` of the weights and configs (checked by
    :func:`accelerated_diffusion.models.load_unet`).  The folder is written beside ``dest`` and swapped in as a
    whole (:func:`~.paths.replace_folder`): ``dest`` must not be the run folder (or hold it, or lie in it), and an
    existing ``dest`` is replaced only by a complete export and only when it is an earlier export
    (:func:`check_export_dest`)."""
    dest = Path(dest)
    check_export_dest(dest, trainer.out)
    with replace_folder(dest, EXPORT_KIND, files=EXPORT_FILES, legacy=LEGACY_EXPORT) as tmp:
        (trainer.ema if use_ema else trainer.model).save_pretrained(tmp, safe_serialization=True)
        build_scheduler(trainer.cfg).save_pretrained(tmp)
        info = dict(
            step=trainer.step,
            elapsed_s=round(trainer.elapsed, 1),
            weights="ema" if use_ema else "raw",
            num_parameters=trainer.num_parameters,
            config=dict(trainer.cfg),
        )
        atomic_write_text(tmp / "training_state.json", dumps_strict(info, indent=2) + "\n")
        if (trainer.out / LOSS_LOG).exists():
            shutil.copyfile(trainer.out / LOSS_LOG, tmp / LOSS_LOG)
        write_sha256sums(tmp, [f.name for f in tmp.iterdir() if f.suffix in CHECKED_SUFFIXES])
    return dest


def _parser() -> argparse.ArgumentParser:
    d = _default_config()
    p = argparse.ArgumentParser(
        prog="python -m accelerated_diffusion.experiments.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/fmnist-ddpm", help="run folder (checkpoint.pt, loss.csv)")
    p.add_argument("--steps", type=int, default=d["steps"], help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--warmup", type=int, default=d["warmup"])
    p.add_argument("--ema-decay", type=float, default=d["ema_decay"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--block-out-channels", type=int, nargs="+", default=d["block_out_channels"])
    p.add_argument("--layers-per-block", type=int, default=d["layers_per_block"])
    p.add_argument("--no-attention", action="store_true", help="no self-attention at the lowest resolution")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    p.add_argument("--log-every", type=int, default=d["log_every"])
    p.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt (an error if missing)")
    p.add_argument(
        "--export",
        default=None,
        help="after training, write the EMA weights in diffusers format here "
        "(a new folder or an earlier export; never --out)",
    )
    p.add_argument("--export-only", action="store_true", help="only export the checkpoint in --out (no training)")
    p.add_argument(
        "--time-limit-min", type=float, default=None, help="stop (with a checkpoint) after this many minutes"
    )
    p.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="decay the learning rate to this value at --steps (cosine); default: constant",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start from an exported model folder (its EMA weights and step; fresh optimiser)",
    )
    p.add_argument("--device", default="cpu", help='"cpu", "cuda", ...: where the network trains')
    p.add_argument("--no-progress", action="store_true")
    return p


def check_config(cfg: dict) -> None:
    """Check the command's settings before any data is loaded; raises :class:`UsageError` with a one-line message
    naming every problem."""
    problems = [
        f"--{k.replace('_', '-')} must be >= 1, got {cfg[k]}"
        for k in ("steps", "batch_size", "checkpoint_every", "log_every")
        if cfg[k] < 1
    ]
    if not (math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        problems.append(f"--lr must be a positive number, got {cfg['lr']}")
    if cfg["warmup"] < 0:
        problems.append(f"--warmup must be >= 0, got {cfg['warmup']}")
    if not 0 <= cfg["seed"] < 2**62:
        problems.append(f"--seed must be in [0, 2**62), got {cfg['seed']}")
    if not 0 <= cfg["ema_decay"] < 1:
        problems.append(f"--ema-decay must be in [0, 1), got {cfg['ema_decay']}")
    try:
        check_architecture(cfg["block_out_channels"], cfg["layers_per_block"])
    except ValueError as err:
        problems.append(
            f"--block-out-channels {' '.join(map(str, cfg['block_out_channels']))} / --layers-per-block "
            f"{cfg['layers_per_block']}: {err}"
        )
    if cfg["max_train_images"] is not None and cfg["max_train_images"] < 1:
        problems.append(f"--max-train-images must be >= 1, got {cfg['max_train_images']}")
    if cfg.get("lr_final") is not None and not (math.isfinite(cfg["lr_final"]) and 0 <= cfg["lr_final"] <= cfg["lr"]):
        problems.append(f"--lr-final must be in [0, --lr], got {cfg['lr_final']}")
    if cfg["threads"] is not None and cfg["threads"] < 1:
        problems.append(f"--threads must be >= 1, got {cfg['threads']}")
    if problems:
        raise UsageError("; ".join(problems))


def _check_command(a: argparse.Namespace, cfg: dict) -> dict | None:
    """Every check of the command line that needs no data: settings, device, run folder, checkpoint (read here,
    weights only), ``--init-from`` and ``--export``; returns the checkpoint to resume from (or None)."""
    check_config(cfg)
    if a.time_limit_min is not None and not (math.isfinite(a.time_limit_min) and a.time_limit_min > 0):
        raise UsageError(f"--time-limit-min must be a positive number, got {a.time_limit_min}")
    if a.init_from and (a.resume or a.export_only):
        raise UsageError("--init-from starts a new run; it cannot be combined with --resume or --export-only")
    if a.export_only and not a.export:
        raise UsageError("--export-only needs --export DIR")
    try:
        torch.empty(0, device=a.device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(
            f"--device {a.device} is not usable here: {str(err).splitlines()[0] if str(err) else err}"
        ) from None
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if a.export:
        try:
            check_export_dest(a.export, out)
        except FileExistsError as err:
            raise UsageError(f"--export: {err}") from None
    ck = out / CHECKPOINT
    st = None
    if a.resume or a.export_only:
        if not ck.is_file():
            raise UsageError(
                f"{'--export-only' if a.export_only else '--resume'}: no checkpoint at {ck}; "
                "start a new run without --resume"
            )
        st = read_checkpoint(ck)
        check_checkpoint(st, cfg, ck)
    elif ck.exists():
        raise UsageError(f"{ck} exists: pass --resume to continue it, or choose another --out")
    if a.init_from:
        read_export_state(a.init_from, cfg)
    return st


def run_command(argv: list[str] | None = None) -> Trainer:
    """Parse the command line, check it (:class:`UsageError` before any data is loaded), train (resuming if asked)
    with ``--out`` locked, export if asked; returns the :class:`Trainer`."""
    a = _parser().parse_args(argv)
    cfg = dict(
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup=a.warmup,
        ema_decay=a.ema_decay,
        seed=a.seed,
        block_out_channels=list(a.block_out_channels),
        layers_per_block=a.layers_per_block,
        attention=not a.no_attention,
        checkpoint_every=a.checkpoint_every,
        log_every=a.log_every,
        max_train_images=a.max_train_images,
        threads=a.threads,
        lr_final=a.lr_final,
        device=a.device,
    )
    st = _check_command(a, cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    with folder_lock(a.out, "train"):
        if st is None and not a.resume and (Path(a.out) / CHECKPOINT).exists():  # written since the check
            raise UsageError(
                f"{Path(a.out) / CHECKPOINT} exists: pass --resume to continue it, or choose another --out"
            )
        tr = Trainer(cfg, a.out)
        if st is not None:
            tr.load_checkpoint(st)
            print(f"resumed from {Path(a.out) / CHECKPOINT} at step {tr.step}")
        if a.init_from:
            tr.init_from_export(a.init_from)
            print(f"initialised from {a.init_from} at step {tr.step}")
        print(
            f"UNet2DModel with {tr.num_parameters:,} parameters; {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads"
        )
        if not a.export_only:
            tr.run(progress=not a.no_progress, time_limit_s=None if a.time_limit_min is None else 60 * a.time_limit_min)
        if a.export:
            export_diffusers(tr, a.export)
            print(f"exported EMA weights at step {tr.step} to {a.export}")
    return tr


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m accelerated_diffusion.experiments.train``; ``accelerated-diffusion train``
    dispatches here); returns the exit status: 0, or 2 with a one-line ``train: error: ...`` on standard error for
    a bad command line (:class:`UsageError`), a run folder in use or an export folder that may not be replaced."""
    try:
        run_command(argv)
    except (UsageError, FileExistsError, FolderInUseError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
