r"""Loading pretrained epsilon-prediction UNets (diffusers format), offline first.

``load_unet("data/fmnist-ddpm")`` loads a local folder; ``load_unet("google/ddpm-church-256")`` loads a hub model
(the paper's checkpoints: ``google/ddpm-church-256``, ``google/ddpm-bedroom-256``,
``google/ddpm-ema-celebahq-256``, or any other ``UNet2DModel`` repository).  The order is:

1. a local folder (a relative path is taken relative to the working directory), holding ``config.json`` and the
   weights at its root (the google/ddpm layout) or in ``unet/`` (the pipeline layout);
2. the Hugging Face cache, without network (``local_files_only=True``);
3. the hub, but only when ``HF_HUB_OFFLINE`` is not set and the endpoint (``HF_ENDPOINT``) answers an HTTP
   request for the model within ``timeout`` seconds (connect *and* read timeout; an endpoint that accepts the
   connection but never answers counts as unreachable), and the download itself runs with connect and read
   timeouts -- so an offline machine or a stalled endpoint gets a :class:`ModelNotAvailableError` within seconds
   (no retry loops) that names the model and says how to fetch it on a machine with network and pass the folder
   instead.

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

import contextlib
import json
import os
import re
import socket
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


class HubTimeoutError(OSError):
    """The hub endpoint stopped answering during a download (connect or read timeout)."""


def is_hub_id(name: str) -> bool:
    """``owner/name`` with the characters the hub allows (a local folder of that name takes precedence)."""
    return bool(_HUB_ID.match(str(name)))


def resolve_local(model_id_or_path) -> Path | None:
    """The local folder ``model_id_or_path`` (relative to the working directory), or None."""
    p = Path(model_id_or_path).expanduser()
    return p if p.is_dir() else None


def hub_reachable(timeout: float = 3.0, model_id: str | None = None) -> tuple[bool, str]:
    """``(ok, reason)``: False when ``HF_HUB_OFFLINE`` is set or the hub endpoint (``HF_ENDPOINT``, default
    https://huggingface.co) does not answer an HTTP request (for ``model_id``'s metadata when given) within
    ``timeout`` seconds, counted separately for connecting and for reading the answer.  Any HTTP answer, even an
    error status, counts as reachable (the download then reports the status)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT.rstrip("/")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    probe = f"{endpoint}/api/models/{quote(model_id)}" if model_id else endpoint + "/"
    try:
        with urllib.request.urlopen(urllib.request.Request(probe, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # the endpoint answered
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return False, f"{host}:{port} unreachable: no answer within {timeout:g} s ({reason})"
    return True, f"{host}:{port} answered"


@contextlib.contextmanager
def _hub_timeouts(connect: float, read: float):
    """Give ``huggingface_hub``'s HTTP client connect and read timeouts for the duration of the block (its
    default client has none: a stalled endpoint would block forever); the previous client factory is restored."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover - other huggingface_hub layouts
        yield
        return
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
    set_factory = getattr(_http, "set_client_factory", None)
    if previous is None or set_factory is None:  # pragma: no cover - other huggingface_hub versions
        yield
        return
    import httpx2 as httpx  # the client library of this huggingface_hub

    class NoRetryOnTimeout(httpx.BaseTransport):
        """A stalled request fails at once with an error the hub client does not retry (it would retry a
        timeout five times with back-off, about half a minute per file)."""

        def __init__(self, inner):
            self.inner = inner

        def handle_request(self, request):
            # a timeout given per request (e.g. the hub's 10 s for metadata) is capped at ours
            limits = dict(request.extensions.get("timeout") or {})
            bound = {"connect": connect, "read": read, "write": read, "pool": connect}
            request.extensions["timeout"] = {k: min(v, limits.get(k) or v) for k, v in bound.items()}
            try:
                return self.inner.handle_request(request)
            except httpx.TimeoutException as e:
                raise HubTimeoutError(f"{request.url} did not answer within {read:g} s ({type(e).__name__})") from None

        def close(self):
            self.inner.close()

    def bounded():
        client = previous()
        client.timeout = httpx.Timeout(read, connect=connect)
        if isinstance(getattr(client, "_transport", None), httpx.BaseTransport):
            client._transport = NoRetryOnTimeout(client._transport)
        return client

    set_factory(bounded)
    try:
        yield
    finally:
        set_factory(previous)


def _not_available(model_id: str, reason: str) -> ModelNotAvailableError:
    folder = "models/" + model_id.split("/")[-1]
    return ModelNotAvailableError(
        f"model {model_id!r} is not in the local Hugging Face cache and cannot be downloaded here: {reason}.\n"
        f"On a machine with network run\n    huggingface-cli download {model_id} --local-dir {folder}\n"
        f"(or `hf download {model_id} --local-dir {folder}`), copy the folder here and pass its path instead of "
        f"the model id, e.g. model_id={folder!r}."
    )


def _from_hub(model_id: str, load, timeout: float, read_timeout: float = 30.0):
    """``load(local_files_only=...)`` from the cache, else (hub reachable) from the hub, else a clear error."""
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        pass
    ok, reason = hub_reachable(timeout, model_id)
    if not ok:
        raise _not_available(model_id, reason)
    try:
        with _hub_timeouts(timeout, read_timeout):
            return load(local_files_only=False)
    except (OSError, ValueError) as e:
        raise _not_available(model_id, f"download failed ({type(e).__name__}: {e})") from e


def _unet_subfolder(folder: Path) -> str | None:
    if (folder / "config.json").exists():
        return None
    if (folder / "unet" / "config.json").exists():
        return "unet"
    raise FileNotFoundError(f"{folder} holds no config.json (nor unet/config.json): not a diffusers UNet folder")


def load_unet(model_id_or_path, device="cpu", dtype: torch.dtype = torch.float32, *, timeout: float = 3.0,
              read_timeout: float = 30.0):
    """A ``diffusers.UNet2DModel`` in eval mode on ``device`` with ``dtype`` (see the module docstring for the
    lookup order; ``timeout``: seconds to connect and for the endpoint's first answer, ``read_timeout``: seconds
    a download may wait for data).  Raises ``FileNotFoundError`` for a path that is neither a folder nor a hub id, and
    :class:`ModelNotAvailableError` (naming the model and the download command) when offline."""
    from diffusers import UNet2DModel

    local = resolve_local(model_id_or_path)
    if local is not None:
        sub = _unet_subfolder(local)
        verify_sha256sums(local / sub if sub else local)
        model = UNet2DModel.from_pretrained(local, subfolder=sub, torch_dtype=dtype)
        return model.to(device).eval()
    name = str(model_id_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name!r} is neither a local folder nor a hub id of the form owner/name")

    def load(local_files_only: bool):
        try:
            return UNet2DModel.from_pretrained(name, torch_dtype=dtype, local_files_only=local_files_only)
        except OSError:  # pipeline layout: the UNet lives in unet/
            return UNet2DModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype, local_files_only=local_files_only)

    return _from_hub(name, load, timeout, read_timeout).to(device).eval()


def load_scheduler_config(model_id_or_path, *, timeout: float = 3.0, read_timeout: float = 30.0) -> dict:
    """The model's ``scheduler_config.json`` (at the root or in ``scheduler/``) as a dict, same lookup as
    :func:`load_unet`; a corrupt file raises ``ValueError`` naming it."""
    local = resolve_local(model_id_or_path)
    if local is not None:
        for f in (local / "scheduler_config.json", local / "scheduler" / "scheduler_config.json"):
            if f.exists():
                verify_sha256sums(f.parent, [f.name])
                return _read_json(f)
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
        return _read_json(Path(f))

    return _from_hub(name, load, timeout, read_timeout)


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
        kind, int(config.get("num_train_timesteps", 1000)), float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
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
    fix = ("pass the model's integer timesteps: sample(eps_fn, x, schedule.path(ts), method, timesteps=ts), or "
           "run_sampler(eps_fn, noise, name, schedule, ts); sample()'s default t (the level alpha_bar) is meant for "
           "exact-score targets")

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
