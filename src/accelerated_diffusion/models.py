r"""Loading pretrained epsilon-prediction UNets (diffusers format), offline first.

``load_unet("data/fmnist-ddpm")`` loads a local folder; ``load_unet("google/ddpm-church-256")`` loads a hub model
(the paper's checkpoints: ``google/ddpm-church-256``, ``google/ddpm-bedroom-256``,
``google/ddpm-ema-celebahq-256``, or any other ``UNet2DModel`` repository).  The order is:

1. a local folder (a relative path is taken relative to the working directory), holding ``config.json`` and the
   weights at its root (the google/ddpm layout) or in ``unet/`` (the pipeline layout);
2. the Hugging Face cache, without network (``local_files_only=True``);
3. the hub, but only after a 3-second TCP check that it is reachable and when ``HF_HUB_OFFLINE`` is not set --
   so an offline machine gets a :class:`ModelNotAvailableError` at once (no retry loops) that names the model
   and says how to fetch it on a machine with network and pass the folder instead.

The scheduler side: :func:`load_scheduler_config` reads ``scheduler_config.json`` the same way, and
:func:`schedule_from_config` turns it into a :class:`~accelerated_diffusion.schedules.DiscreteSchedule`
(checking that the model predicts epsilon with a standard beta schedule).  :func:`eps_fn` wraps a UNet as the
``eps_fn(x, t)`` that :func:`accelerated_diffusion.sample` calls.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .schedules import BETA_SCHEDULES, DiscreteSchedule

__all__ = [
    "PAPER_MODELS",
    "ModelNotAvailableError",
    "is_hub_id",
    "resolve_local",
    "hub_reachable",
    "load_unet",
    "load_scheduler_config",
    "schedule_from_config",
    "eps_fn",
]

PAPER_MODELS = ("google/ddpm-church-256", "google/ddpm-bedroom-256", "google/ddpm-ema-celebahq-256")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelNotAvailableError(OSError):
    """A hub model that is neither cached nor downloadable from here; the message says how to get it."""


def is_hub_id(name: str) -> bool:
    """``owner/name`` with the characters the hub allows (a local folder of that name takes precedence)."""
    return bool(_HUB_ID.match(str(name)))


def resolve_local(model_id_or_path) -> Path | None:
    """The local folder ``model_id_or_path`` (relative to the working directory), or None."""
    p = Path(model_id_or_path).expanduser()
    return p if p.is_dir() else None


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """``(ok, reason)``: False when ``HF_HUB_OFFLINE`` is set or a TCP connection to the hub endpoint
    (``HF_ENDPOINT``, default huggingface.co:443) fails within ``timeout`` seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} reachable"
    except OSError as e:
        return False, f"{host}:{port} unreachable within {timeout:g} s ({e})"


def _not_available(model_id: str, reason: str) -> ModelNotAvailableError:
    folder = "models/" + model_id.split("/")[-1]
    return ModelNotAvailableError(
        f"model {model_id!r} is not in the local Hugging Face cache and cannot be downloaded here: {reason}.\n"
        f"On a machine with network run\n    huggingface-cli download {model_id} --local-dir {folder}\n"
        f"(or `hf download {model_id} --local-dir {folder}`), copy the folder here and pass its path instead of "
        f"the model id, e.g. model_id={folder!r}."
    )


def _from_hub(model_id: str, load, timeout: float):
    """``load(local_files_only=...)`` from the cache, else (hub reachable) from the hub, else a clear error."""
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        pass
    ok, reason = hub_reachable(timeout)
    if not ok:
        raise _not_available(model_id, reason)
    try:
        return load(local_files_only=False)
    except (OSError, ValueError) as e:
        raise _not_available(model_id, f"download failed ({type(e).__name__}: {e})") from e


def _unet_subfolder(folder: Path) -> str | None:
    if (folder / "config.json").exists():
        return None
    if (folder / "unet" / "config.json").exists():
        return "unet"
    raise FileNotFoundError(f"{folder} holds no config.json (nor unet/config.json): not a diffusers UNet folder")


def load_unet(model_id_or_path, device="cpu", dtype: torch.dtype = torch.float32, *, timeout: float = 3.0):
    """A ``diffusers.UNet2DModel`` in eval mode on ``device`` with ``dtype`` (see the module docstring for the
    lookup order).  Raises ``FileNotFoundError`` for a path that is neither a folder nor a hub id, and
    :class:`ModelNotAvailableError` (naming the model and the download command) when offline."""
    from diffusers import UNet2DModel

    local = resolve_local(model_id_or_path)
    if local is not None:
        model = UNet2DModel.from_pretrained(local, subfolder=_unet_subfolder(local), torch_dtype=dtype)
        return model.to(device).eval()
    name = str(model_id_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither a local folder nor a hub id of the form owner/name")

    def load(local_files_only: bool):
        try:
            return UNet2DModel.from_pretrained(name, torch_dtype=dtype, local_files_only=local_files_only)
        except OSError:  # pipeline layout: the UNet lives in unet/
            return UNet2DModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype, local_files_only=local_files_only)

    return _from_hub(name, load, timeout).to(device).eval()


def load_scheduler_config(model_id_or_path, *, timeout: float = 3.0) -> dict:
    """The model's ``scheduler_config.json`` (at the root or in ``scheduler/``) as a dict, same lookup as
    :func:`load_unet`."""
    local = resolve_local(model_id_or_path)
    if local is not None:
        for f in (local / "scheduler_config.json", local / "scheduler" / "scheduler_config.json"):
            if f.exists():
                return json.loads(f.read_text())
        raise FileNotFoundError(f"{local} holds no scheduler_config.json (nor scheduler/scheduler_config.json)")
    name = str(model_id_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither a local folder nor a hub id of the form owner/name")
    from huggingface_hub import hf_hub_download

    def load(local_files_only: bool):
        try:
            f = hf_hub_download(name, "scheduler_config.json", local_files_only=local_files_only, etag_timeout=timeout)
        except OSError:
            f = hf_hub_download(name, "scheduler_config.json", subfolder="scheduler", local_files_only=local_files_only, etag_timeout=timeout)
        return json.loads(Path(f).read_text())

    return _from_hub(name, load, timeout)


def schedule_from_config(config: dict) -> DiscreteSchedule:
    """The training schedule of a diffusers scheduler config (``beta_schedule``, ``num_train_timesteps``,
    ``beta_start``, ``beta_end``); raises ``ValueError`` for trained betas, an unknown beta schedule or a
    ``prediction_type`` other than ``epsilon`` (our samplers need noise predictions)."""
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler configs with trained_betas are not supported")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"the model predicts {config['prediction_type']!r}; the samplers need 'epsilon'")
    kind = config.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"unsupported beta_schedule {kind!r}; expected one of {BETA_SCHEDULES}")
    return DiscreteSchedule.from_diffusers(
        kind, int(config.get("num_train_timesteps", 1000)), float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    )


def eps_fn(unet):
    """``eps_fn(x, t)`` for :func:`accelerated_diffusion.sample`: ``unet(x, t).sample`` without gradients,
    ``x`` cast to the model's dtype and device and the output cast back to ``x``'s."""
    p = next(unet.parameters())

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        with torch.inference_mode():
            return unet(x.to(p.device, p.dtype), t).sample.to(x.device, x.dtype)

    return fn
