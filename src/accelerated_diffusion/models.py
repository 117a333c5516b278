r"""Loading pretrained epsilon-prediction UNets (diffusers format), offline first.

``load_unet("data/fmnist-ddpm")`` loads a local folder; ``load_unet("google/ddpm-church-256")`` loads a hub model
(the paper's checkpoints: ``google/ddpm-church-256``, ``google/ddpm-bedroom-256``,
``google/ddpm-ema-celebahq-256``, or any other ``UNet2DModel`` repository).  The order is:

1. a local folder (a relative path is taken relative to the working directory), holding ``config.json`` and the
   weights at its root (the google/ddpm layout) or in ``unet/`` (the pipeline layout);
2. the Hugging Face cache, without network (``local_files_only=True``);
3. the hub, but only when ``HF_HUB_OFFLINE`` is not set and the endpoint (``HF_ENDPOINT``) answers an HTTP
   request for the model completely within ``timeout`` seconds (an overall deadline, not a per-read timeout: an
   endpoint that accepts the connection but never answers, or answers one byte at a time, counts as
   unreachable), and the download itself must finish within ``download_timeout`` seconds -- so an offline
   machine or a stalled endpoint gets a :class:`ModelNotAvailableError` within seconds that names the model and
   says how to fetch it on a machine with network and pass the folder instead.

A name that looks like a local path (it starts with ``.``, ``/`` or ``~``, has more separators than one
``owner/name``, is a :class:`pathlib.Path`, or its parent folder exists here) but is not a folder raises
``FileNotFoundError`` naming the missing local path; the hub is not asked.

The deadlines are kept by :func:`call_with_deadline`, which runs the blocking call in a daemon thread and stops
waiting for it at the deadline (:class:`HubTimeoutError`); ``huggingface_hub`` is used through its public API
only.

Local folders with a ``SHA256SUMS`` file (the shipped ``data/fmnist-ddpm``, and every folder the project's export
commands write) are checked against it before loading (:func:`accelerated_diffusion.integrity.verify_sha256sums`):
weights whose bytes changed raise :class:`~accelerated_diffusion.integrity.ChecksumError` instead of loading as
NaN or garbage.

The scheduler side: :func:`load_scheduler_config` reads ``scheduler_config.json`` the same way, and
:func:`schedule_from_config` turns it into a :class:`~accelerated_diffusion.schedules.DiscreteSchedule`
(checking that the model predicts epsilon with a standard beta schedule).  :func:`eps_fn` wraps a UNet as the
``eps_fn(x, t)`` that the sampling loops call, and refuses a ``t`` that is not an integer timestep.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

import numpy as np
import torch

from .integrity import verify_sha256sums
from .schedules import BETA_SCHEDULES, DiscreteSchedule, is_integer_dtype

__all__ = [
    "PAPER_MODELS",
    "ModelNotAvailableError",
    "HubTimeoutError",
    "call_with_deadline",
    "is_hub_id",
    "looks_local",
    "resolve_local",
    "hub_reachable",
    "load_unet",
    "load_scheduler_config",
    "schedule_from_config",
    "eps_fn",
]

PAPER_MODELS = ("google/ddpm-church-256", "google/ddpm-bedroom-256", "google/ddpm-ema-celebahq-256")
#: Overall seconds a hub download may take (the paper's checkpoints are about 455 MB: 120 s needs about 4 MB/s;
#: on a slower link pass ``download_timeout=`` or fetch the folder with ``hf download``).
DOWNLOAD_TIMEOUT_S = 120.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelNotAvailableError(OSError):
    """A hub model that is neither cached nor downloadable from here; the message says how to get it."""


class HubTimeoutError(TimeoutError):
    """A network call did not finish within its overall deadline (:func:`call_with_deadline`)."""


def call_with_deadline(fn, seconds: float, what: str, error: type[BaseException] = HubTimeoutError):
    """``fn()``, or ``error`` (default :class:`HubTimeoutError`) naming ``what`` when it has not returned after
    ``seconds`` seconds in all, however the time is spent (connecting, a slow trickle of bytes, retries).

    ``fn`` runs in a daemon thread; at the deadline this function stops waiting and raises.  The thread cannot be
    killed: it ends when its blocking call fails or completes (a script exits regardless: daemon threads do not
    keep the interpreter alive), so ``fn`` must not leave shared state half-written if it finishes late (the
    ``huggingface_hub`` cache and :mod:`.experiments.data` write to temporary files and rename)."""
    if not seconds > 0:
        raise ValueError(f"the deadline must be > 0 seconds, got {seconds!r}")
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True, name=f"deadline {seconds:g} s: {what}")
    th.start()
    th.join(seconds)
    if th.is_alive():
        raise error(f"{what} did not finish within {seconds:g} s (overall deadline)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def is_hub_id(name: str) -> bool:
    """``owner/name`` with the characters the hub allows (a local folder of that name takes precedence)."""
    return bool(_HUB_ID.match(str(name)))


def resolve_local(model_id_or_path) -> Path | None:
    """The local folder ``model_id_or_path`` (relative to the working directory), or None."""
    p = Path(model_id_or_path).expanduser()
    return p if p.is_dir() else None


def looks_local(model_id_or_path) -> bool:
    """Whether ``model_id_or_path`` is meant as a local path rather than a hub id: a :class:`pathlib.Path`, a name
    starting with ``.``, ``/`` or ``~``, one with a separator that a hub id cannot have (more than one ``/``, or
    ``os.sep`` / ``os.altsep`` other than ``/``), or one whose parent folder exists here (``data/fmnist-ddpn``
    beside ``data/``)."""
    if isinstance(model_id_or_path, os.PathLike):
        return True
    name = str(model_id_or_path)
    if name.startswith((".", "/", "~")):
        return True
    seps = {os.sep, os.altsep} - {None, "/"}
    if any(c in name for c in seps) or name.count("/") > 1:
        return True
    parent = Path(name).expanduser().parent
    return parent != Path(".") and parent.is_dir()


def _missing_local(name) -> FileNotFoundError:
    """The error for a local-looking path that is not a folder, with close matches beside it."""
    p = Path(name).expanduser()
    hint = ""
    parent = p.parent if str(p.parent) else Path(".")
    if parent.is_dir():
        near = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir() if c.is_dir()], n=3)
        if near:
            hint = " (did you mean " + " or ".join(repr(str(parent / c)) for c in near) + "?)"
        elif p.exists():
            hint = " (it is a file)"
    else:
        hint = f" (its parent {str(parent)!r} does not exist either)"
    return FileNotFoundError(
        f"local model folder {str(name)!r} does not exist{hint}; pass an existing folder, or a "
        "hub id of the form owner/name"
    )


def _resolve(model_id_or_path) -> tuple[Path | None, str]:
    """``(local folder, name)`` or ``(None, hub id)``; ``FileNotFoundError`` for a missing local path or a name
    that is neither (no hub request is made for either)."""
    local = resolve_local(model_id_or_path)
    if local is not None:
        return local, str(model_id_or_path)
    if looks_local(model_id_or_path):
        raise _missing_local(model_id_or_path)
    name = str(model_id_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither a local folder nor a hub id of the form owner/name")
    return None, name


def hub_reachable(timeout: float = 3.0, model_id: str | None = None) -> tuple[bool, str]:
    """``(ok, reason)``: False when ``HF_HUB_OFFLINE`` is set or the hub endpoint (``HF_ENDPOINT``, default
    https://huggingface.co) does not answer an HTTP ``HEAD`` request (for ``model_id``'s metadata when given)
    completely within ``timeout`` seconds in all (:func:`call_with_deadline`: an endpoint that trickles its
    answer a byte at a time fails too).  Any HTTP answer, even an error status, counts as reachable (the
    download then reports the status)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT.rstrip("/")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    probe = f"{endpoint}/api/models/{quote(model_id)}" if model_id else endpoint + "/"

    def head():
        try:
            with urllib.request.urlopen(urllib.request.Request(probe, method="HEAD"), timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # the endpoint answered

    t0 = time.monotonic()
    try:
        call_with_deadline(head, timeout, f"HEAD {probe}")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return False, f"{host}:{port} unreachable: no complete answer within {timeout:g} s ({reason})"
    return True, f"{host}:{port} answered in {time.monotonic() - t0:.1f} s"


def _not_available(model_id: str, reason: str) -> ModelNotAvailableError:
    folder = "models/" + model_id.split("/")[-1]
    return ModelNotAvailableError(
        f"model {model_id!r} is not in the local Hugging Face cache and cannot be downloaded here: {reason}.\n"
        f"On a machine with network run\n    huggingface-cli download {model_id} --local-dir {folder}\n"
        f"(or `hf download {model_id} --local-dir {folder}`), copy the folder here and pass its path instead of "
        f"the model id, e.g. model_id={folder!r}."
    )


def _from_hub(model_id: str, load, timeout: float, download_timeout: float):
    """``load(local_files_only=...)`` from the cache, else (hub reachable within ``timeout``) from the hub within
    ``download_timeout`` seconds in all, else a clear error."""
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        pass
    ok, reason = hub_reachable(timeout, model_id)
    if not ok:
        raise _not_available(model_id, reason)
    try:
        return call_with_deadline(
            lambda: load(local_files_only=False), download_timeout, f"downloading {model_id} from the hub"
        )
    except (OSError, ValueError) as e:
        raise _not_available(model_id, f"download failed ({type(e).__name__}: {e})") from e


def _unet_subfolder(folder: Path) -> str | None:
    if (folder / "config.json").exists():
        return None
    if (folder / "unet" / "config.json").exists():
        return "unet"
    raise FileNotFoundError(f"{folder} holds no config.json (nor unet/config.json): not a diffusers UNet folder")


def load_unet(
    model_id_or_path,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    *,
    timeout: float = 3.0,
    download_timeout: float = DOWNLOAD_TIMEOUT_S,
):
    """A ``diffusers.UNet2DModel`` in eval mode on ``device`` with ``dtype`` (see the module docstring for the
    lookup order; ``timeout``: overall seconds for the hub's answer to the reachability probe,
    ``download_timeout``: overall seconds for the download).  Raises ``FileNotFoundError`` for a local-looking path
    that does not exist or a name that is neither a folder nor a hub id, and :class:`ModelNotAvailableError`
    (naming the model and the download command) when offline or when the hub misses a deadline."""
    from diffusers import UNet2DModel

    local, name = _resolve(model_id_or_path)
    if local is not None:
        sub = _unet_subfolder(local)
        verify_sha256sums(local / sub if sub else local)
        model = UNet2DModel.from_pretrained(local, subfolder=sub, torch_dtype=dtype)
        return model.to(device).eval()

    def load(local_files_only: bool):
        try:
            return UNet2DModel.from_pretrained(name, torch_dtype=dtype, local_files_only=local_files_only)
        except OSError:  # pipeline layout: the UNet lives in unet/
            return UNet2DModel.from_pretrained(
                name, subfolder="unet", torch_dtype=dtype, local_files_only=local_files_only
            )

    return _from_hub(name, load, timeout, download_timeout).to(device).eval()


def load_scheduler_config(
    model_id_or_path, *, timeout: float = 3.0, download_timeout: float = DOWNLOAD_TIMEOUT_S
) -> dict:
    """The model's ``scheduler_config.json`` (at the root or in ``scheduler/``) as a dict, same lookup and
    deadlines as :func:`load_unet`; a corrupt file raises ``ValueError`` naming it."""
    local, name = _resolve(model_id_or_path)
    if local is not None:
        for f in (local / "scheduler_config.json", local / "scheduler" / "scheduler_config.json"):
            if f.exists():
                verify_sha256sums(f.parent, [f.name])
                return _read_json(f)
        raise FileNotFoundError(f"{local} holds no scheduler_config.json (nor scheduler/scheduler_config.json)")
    from huggingface_hub import hf_hub_download

    def load(local_files_only: bool):
        try:
            f = hf_hub_download(name, "scheduler_config.json", local_files_only=local_files_only, etag_timeout=timeout)
        except OSError:
            f = hf_hub_download(
                name,
                "scheduler_config.json",
                subfolder="scheduler",
                local_files_only=local_files_only,
                etag_timeout=timeout,
            )
        return _read_json(Path(f))

    return _from_hub(name, load, timeout, download_timeout)


def _read_json(f: Path) -> dict:
    """A JSON object from ``f``; a corrupt file raises ``ValueError`` naming it."""
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}): restore or re-download the file") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f} holds a JSON {type(cfg).__name__}, expected an object (a scheduler config)")
    return cfg


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
        kind,
        int(config.get("num_train_timesteps", 1000)),
        float(config.get("beta_start", 1e-4)),
        float(config.get("beta_end", 0.02)),
    )


def eps_fn(unet, num_train_timesteps: int = 1000):
    """``eps_fn(x, t)`` for the sampling loops: ``unet(x, t).sample`` without gradients, ``x`` cast to the model's
    dtype and device and the output cast back to ``x``'s.

    ``t`` must be the model's integer timestep: an int or an integer tensor (one entry, or one per batch entry) in
    ``[0, num_train_timesteps)``.  Anything else -- typically the float level ``alpha_bar`` that
    :func:`accelerated_diffusion.sample` passes when called without ``timesteps=`` -- raises a ``TypeError`` /
    ``ValueError`` saying what to pass: a UNet fed levels as timesteps returns plausible-looking but wrong noise.
    The values of a tensor on an accelerator are not read (that would synchronise every step): only its dtype is
    checked there.
    """
    p = next(unet.parameters())
    n = int(num_train_timesteps)
    fix = (
        "pass the model's integer timesteps: sample(eps_fn, x, schedule.path(ts), method, timesteps=ts), or "
        "run_sampler(eps_fn, noise, name, schedule, ts); sample()'s default t (the level alpha_bar) is meant for "
        "exact-score targets"
    )

    def check(t) -> None:
        if isinstance(t, torch.Tensor):
            if not is_integer_dtype(t.dtype):
                raise TypeError(f"the UNet got a timestep tensor of dtype {t.dtype}; {fix}")
            if t.device.type != "cpu":
                return
        elif isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"the UNet got timestep t={t!r} ({type(t).__name__}), not an integer; {fix}")
        bad = torch.as_tensor(t).reshape(-1)
        bad = bad[(bad < 0) | (bad >= n)]
        if bad.numel():
            raise ValueError(f"the UNet got timestep {int(bad[0])}, outside [0, num_train_timesteps={n}); {fix}")

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        check(t)
        with torch.inference_mode():
            return unet(x.to(p.device, p.dtype), t).sample.to(x.device, x.dtype)

    return fn
