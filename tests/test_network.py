"""Network calls have an overall deadline (issue 18, item 5): a server on 127.0.0.1 that answers a byte at a time
(two a second: per-read timeouts never fire) makes the hub probe fail within its stated timeout, a hub download within its
deadline and the Fashion-MNIST download within ``TIMEOUT_S``; ``huggingface_hub`` is pointed at the server through
its public ``HF_ENDPOINT`` setting (read at import, hence a subprocess), the dataset code through
``$FASHION_MNIST_URL``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from accelerated_diffusion import models
from accelerated_diffusion.experiments import data

ROOT = Path(__file__).resolve().parents[1]


class DripServer:
    """A threaded HTTP server on 127.0.0.1 that answers every request one byte every ``interval_s`` seconds (a 200
    whose headers promise 10 MB), except a ``HEAD`` of a path starting with ``answer_prefix`` (e.g.
    ``/api/models/fast/``), which gets a prompt 200: a client probing that model passes the reachability probe and
    meets the drip in the download.  Bounded: a response drips for at most ``drip_s``
    seconds and the server shuts itself down after ``lifetime_s`` seconds (or at :meth:`close`)."""

    def __init__(
        self,
        *,
        answer_prefix: str | None = None,
        interval_s: float = 0.5,
        drip_s: float = 60.0,
        lifetime_s: float = 90.0,
    ):
        stop = self.stop = threading.Event()
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _drip(self):
                outer.requests.append(f"{self.command} {self.path}")
                if answer_prefix and self.command == "HEAD" and self.path.startswith(answer_prefix):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n" + b"x" * 1000
                t_end = time.monotonic() + drip_s
                for i in range(len(body)):
                    if stop.is_set() or time.monotonic() > t_end:
                        return
                    try:
                        self.wfile.write(body[i : i + 1])
                    except OSError:
                        return
                    stop.wait(interval_s)

            do_GET = do_HEAD = _drip

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        self.timer = threading.Timer(lifetime_s, self.close)
        self.timer.daemon = True
        self.timer.start()

    def close(self):
        if not self.stop.is_set():
            self.stop.set()
            self.timer.cancel()
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def drip():
    servers = []

    def start(**kw):
        servers.append(DripServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_drip_server_defeats_a_per_read_timeout(drip):
    """The server really trickles: a plain urllib request with a 1.5 s per-read timeout is still reading after 3 s
    (so the tests below test an overall deadline, not a socket timeout)."""
    import urllib.request

    server = drip()
    done = threading.Event()

    def get():
        try:
            urllib.request.urlopen(server.url + "/x", timeout=1.5).read()
        except Exception:  # noqa: BLE001 - whatever ends it
            pass
        done.set()

    threading.Thread(target=get, daemon=True).start()
    assert not done.wait(3.0)
    assert server.requests == ["GET /x"]


def test_fashion_mnist_download_from_a_drip_server_fails_within_its_timeout(drip, tmp_path, monkeypatch):
    server = drip()
    monkeypatch.setenv("FASHION_MNIST_URL", server.url + "/")  # read at each call
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*bytes/s"):
        data._download(tmp_path / "cache", timeout=2.0)
    assert time.monotonic() - t0 < 4.0
    assert server.requests == ["GET /train-images-idx3-ubyte.gz"]
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file


def test_hub_probe_of_a_drip_server_fails_within_its_timeout(drip, monkeypatch):
    from huggingface_hub import constants

    server = drip()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # what HF_ENDPOINT gives a fresh process
    t0 = time.monotonic()
    ok, reason = models.hub_reachable(timeout=1.5, model_id="someone/model")
    assert not ok and "within 1.5 s" in reason, reason
    assert time.monotonic() - t0 < 2.5
    assert server.requests == ["HEAD /api/models/someone/model"]


def test_call_with_deadline():
    assert models.call_with_deadline(lambda: 3, 1.0, "three") == 3
    with pytest.raises(ZeroDivisionError):
        models.call_with_deadline(lambda: 1 / 0, 1.0, "division")
    t0 = time.monotonic()
    with pytest.raises(models.HubTimeoutError, match=r"sleeping did not finish within 0\.3 s"):
        models.call_with_deadline(lambda: time.sleep(5), 0.3, "sleeping")
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ValueError, match="deadline"):
        models.call_with_deadline(lambda: 3, 0, "x")


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from accelerated_diffusion import models
    out = {}
    for model in ("slow/tiny-model", "fast/tiny-model"):
        for load in (models.load_unet, models.load_scheduler_config):
            t0 = time.monotonic()
            try:
                load(model, timeout=1.0, download_timeout=2.0)
                msg = "loaded"
            except Exception as e:
                msg = type(e).__name__ + ": " + str(e)
            out[model + " " + load.__name__] = [msg, time.monotonic() - t0]
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_load_from_a_drip_hub_fails_within_the_deadlines(drip, tmp_path):
    """``HF_ENDPOINT`` (read by huggingface_hub at import) points a fresh process at the drip server with an empty
    cache: ``load_unet`` and ``load_scheduler_config`` fail with ModelNotAvailableError within the probe's 1 s
    (``slow/``: the probe drips) or the probe plus the download's 2 s deadline (``fast/``: the probe is answered,
    the download drips), not after minutes."""
    server = drip(answer_prefix="/api/models/fast/")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1")
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out) == 4
    for what, (msg, seconds) in out.items():
        assert msg.startswith("ModelNotAvailableError") and what.split()[0] in msg, (what, msg)
        if what.startswith("slow/"):
            assert "no complete answer within 1 s" in msg and seconds < 1.0 + 1.5, (what, seconds, msg)
        else:
            assert "within 2 s (overall deadline)" in msg and seconds < 1.0 + 2.0 + 1.5, (what, seconds, msg)
    assert any(r.startswith("HEAD /api/models/slow/") for r in server.requests)
    assert any(not r.startswith("HEAD /api/models/") for r in server.requests)  # a download was tried


@contextlib.contextmanager
def prompt_server(payload: bytes):
    """A server on 127.0.0.1 that answers every GET at once with ``payload``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fashion_mnist_download_from_a_prompt_server_completes_and_is_md5_checked(tmp_path):
    """The deadline does not cut a normal transfer: 300 kB served at once arrive whole, and then the MD5 check
    (not a timeout) refuses them; nothing is left in the cache."""
    with prompt_server(bytes(range(256)) * 1200) as url:
        with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz has MD5 .* \(corrupt download\)"):
            data._download(tmp_path / "cache", timeout=2.0, url=url)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fashion_mnist_download_lands_with_the_umask_permissions(tmp_path, monkeypatch):
    """A completed, MD5-checked download is renamed into place with the permissions of the umask, not the 0o600
    of its temporary file."""
    import hashlib

    payload = b"fashion" * 1000
    monkeypatch.setattr(data, "FILES", {"probe.gz": (hashlib.md5(payload).hexdigest(), "")})
    mask = os.umask(0o022)
    try:
        with prompt_server(payload) as url:
            data._download(tmp_path / "cache", timeout=2.0, url=url)
    finally:
        os.umask(mask)
    f = tmp_path / "cache" / "probe.gz"
    assert f.read_bytes() == payload and (f.stat().st_mode & 0o777) == 0o644
