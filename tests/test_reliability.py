"""Reliability of the tools around the numerical library: network calls that cannot hang, files that are never
half-written, run folders that are complete or visibly incomplete, arguments checked before any work, shipped
weights checked against their recorded SHA-256, and claims that hold (resumed loss logs, reloadable pipelines).
Every test is bounded in time (a stalled call runs in a daemon thread that the test stops waiting for)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from accelerated_diffusion import models
from accelerated_diffusion.integrity import SHA256SUMS, ChecksumError, verify_sha256sums
from accelerated_diffusion.experiments import classifier, data, features, generate, paths, train
from test_generate import tiny_model

ARGS = [
    "--samplers",
    "ddim",
    "accelerated_sde",
    "--nfe",
    "3",
    "--num-samples",
    "5",
    "--batch-size",
    "2",
    "--threads",
    "1",
    "--no-progress",
]


# ---------------------------------------------------------------------------------------------------- helpers
class HalfOpenServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (``answer_probe``: except a
    ``HEAD /api/models/...`` request, answered 200, so that a client gets past a reachability probe)."""

    def __init__(self, answer_probe: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.answer_probe, self.conns, self.closed = answer_probe, [], False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.answer_probe:
                threading.Thread(target=self._maybe_answer, args=(conn,), daemon=True).start()

    def _maybe_answer(self, conn):
        try:
            if conn.recv(4096).startswith(b"HEAD /api/models/"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                conn.close()
        except OSError:
            pass

    def close(self):
        self.closed = True
        for c in [self.sock, *self.conns]:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def half_open():
    server = HalfOpenServer()
    yield server
    server.close()


def call_bounded(fn, limit_s: float):
    """``(exception or result, seconds)`` of ``fn()`` run in a daemon thread; fails the test when it is still
    running after ``limit_s`` seconds (a hang), without waiting for it."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            box["result"] = e

    t0 = time.perf_counter()
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(limit_s)
    assert not th.is_alive(), f"still blocked after {limit_s} s"
    return box["result"], time.perf_counter() - t0


@pytest.fixture
def online_hub(monkeypatch, tmp_path):
    """The hub client configured as online, with an empty cache, against an endpoint the test sets."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def point_at(url):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)  # what HF_ENDPOINT gives a process started with it
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    return point_at


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def run_generate(tiny, out, *extra):
    return generate.main(["--model", str(tiny), *ARGS, "--out", str(out), *extra])


# ------------------------------------------------------------------------------- 1. run folders and manifests
def test_interrupted_rerun_is_visibly_incomplete_refused_and_resumable(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_generate(tiny, out) == 0  # a finished run, seeds 0..4
    assert run_generate(tiny, out, "--seed", "7") == 2  # the folder is in use: no silent mixing
    assert "--resume" in capsys.readouterr().err
    real_save, calls = generate.save_batch, []

    def interrupted(*a, **k):  # killed after two batches of the rerun
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real_save(*a, **k)

    monkeypatch.setattr(generate, "save_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_generate(tiny, out, "--seed", "7", "--overwrite")
    monkeypatch.setattr(generate, "save_batch", real_save)
    assert not (out / "manifest.json").exists() and generate.folder_state(out) == "incomplete"
    assert len(generate.files_present(out)) == 2
    with pytest.raises(generate.IncompleteRunError, match="interrupted run"):
        generate.check_manifest(out / "manifest.json")
    assert generate.metrics_main([str(out / "manifest.json"), "--no-real-baseline"]) == 2
    assert run_generate(tiny, out, "--seed", "8") == 2  # another seed without --overwrite
    assert run_generate(tiny, out, "--seed", "8", "--resume") == 2  # resume with other settings
    (out / "ddim" / "nfe003" / ".batch00002.pt.x1.tmp").write_bytes(b"half a batch")  # a write cut by a kill
    assert run_generate(tiny, out, "--seed", "7", "--resume") == 0
    m = generate.check_manifest(out)
    assert [r["images_computed"] for r in m["runs"]] == [1, 5]  # 2 batches of ddim (4 images) were kept
    fresh = tmp_path / "fresh"
    assert run_generate(tiny, fresh, "--seed", "7") == 0
    for r in m["runs"]:
        files = [f for b in r["batches"] for f in b["files"]]
        assert torch.equal(generate.load_images(out, files), generate.load_images(fresh, files))
        assert [s for b in r["batches"] for s in b["seeds"]] == list(range(7, 12))


@pytest.mark.parametrize("fmt", ["pt", "npz", "png"])
def test_metrics_refuses_a_folder_changed_after_the_run(tiny, tmp_path, fmt):
    out = tmp_path / fmt
    assert run_generate(tiny, out, "--format", fmt) == 0
    generate.check_manifest(out)
    folder = out / "ddim" / "nfe003"
    # a batch of another seed, as an unfinished rerun with --seed 40 would write it
    names = generate.save_batch(torch.zeros(2, 1, 28, 28), [40, 41], tmp_path / "other", 0, fmt)
    if fmt == "png":  # the seed is the file name: another seed is another file
        shutil.copyfile(tmp_path / "other" / names[0], folder / names[0])
        with pytest.raises(generate.IncompleteRunError, match="1 present but not listed"):
            generate.check_manifest(out)
        (folder / names[0]).unlink()
    else:  # same file name, other seeds inside
        backup = (folder / names[0]).read_bytes()
        shutil.copyfile(tmp_path / "other" / names[0], folder / names[0])
        with pytest.raises(generate.IncompleteRunError, match="seeds"):
            generate.check_manifest(out)
        (folder / names[0]).write_bytes(backup)
    generate.check_manifest(out)
    victim = sorted(folder.iterdir())[-1]
    victim.unlink()
    with pytest.raises(generate.IncompleteRunError, match="1 listed but missing"):
        generate.check_manifest(out)
    assert generate.metrics_main([str(out), "--no-real-baseline"]) == 2


# --------------------------------------------------------------------- 2. shipped artefacts replaced as a whole
def test_classifier_default_output_is_not_the_shipped_folder():
    assert not classifier.DEFAULT_OUT.resolve().is_relative_to(paths.data_dir().resolve())
    assert not Path(train._parser().get_default("out")).resolve().is_relative_to(paths.data_dir().resolve())


def test_interrupted_classifier_write_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    out = tmp_path / "fmnist-classifier"
    shutil.copytree(paths.data_dir() / "fmnist-classifier", out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    model = features.FashionCNN()
    mu, sigma = torch.zeros(128, dtype=torch.float64), torch.eye(128, dtype=torch.float64)
    real = paths.atomic_write_text

    def dies_on_config(path, text):  # weights and statistics written, then killed before the config
        if Path(path).name == "config.json":
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(classifier, "atomic_write_text", dies_on_config)
    with pytest.raises(KeyboardInterrupt):
        classifier.write_classifier(out, model, {"feature_dim": 128}, mu, sigma, "card")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["fmnist-classifier"]  # no temporary folder left
    monkeypatch.setattr(classifier, "atomic_write_text", real)
    classifier.write_classifier(out, model, {"feature_dim": 128, "dropout": 0.3}, mu, sigma, "card")
    assert sorted(verify_sha256sums(out)) == [
        "accelerated_diffusion_export.json",
        "config.json",
        "model.safetensors",
        "test_stats.safetensors",
    ]
    loaded = features.load_classifier(out)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_train_export_replaces_the_folder_as_a_whole(tmp_path, monkeypatch):
    tr = train.Trainer(
        {"block_out_channels": [8, 16], "batch_size": 2, "steps": 1},
        tmp_path / "run",
        torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
    )
    dest = train.export_diffusers(tr, tmp_path / "export")
    assert "diffusion_pytorch_model.safetensors" in verify_sha256sums(dest)
    models.load_unet(dest)
    before = {f.name: f.read_bytes() for f in dest.iterdir()}
    monkeypatch.setattr(train, "write_sha256sums", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    tr.step = 5
    with pytest.raises(KeyboardInterrupt):
        train.export_diffusers(tr, dest)
    assert {f.name: f.read_bytes() for f in dest.iterdir()} == before


# ------------------------------------------------------------------------------------------------- 3. hangs
def test_hub_endpoint_that_never_answers_fails_within_seconds(half_open, online_hub):
    online_hub(half_open.url)
    err, seconds = call_bounded(lambda: models.load_unet("google/ddpm-church-256", timeout=1.0), 30)
    assert isinstance(err, models.ModelNotAvailableError), err
    assert "google/ddpm-church-256" in str(err) and "--local-dir" in str(err) and seconds < 10
    err, seconds = call_bounded(lambda: models.load_scheduler_config("google/ddpm-church-256", timeout=1.0), 30)
    assert isinstance(err, models.ModelNotAvailableError) and seconds < 10, err


def test_hub_download_that_stalls_after_the_probe_fails_within_seconds(online_hub):
    server = HalfOpenServer(answer_probe=True)
    try:
        online_hub(server.url)
        err, seconds = call_bounded(
            lambda: models.load_unet("google/ddpm-church-256", timeout=1.0, download_timeout=1.0), 60
        )
    finally:
        server.close()
    assert isinstance(err, models.ModelNotAvailableError), err
    assert "google/ddpm-church-256" in str(err) and seconds < 10


def test_fashion_mnist_download_that_never_answers_fails_within_seconds(half_open, monkeypatch, tmp_path):
    monkeypatch.setattr(data, "OFFICIAL_URL", half_open.url + "/")
    monkeypatch.setattr(data, "TIMEOUT_S", 1.0, raising=False)
    err, seconds = call_bounded(lambda: data._download(tmp_path / "cache"), 30)
    assert isinstance(err, FileNotFoundError), err
    assert "train-images-idx3-ubyte.gz" in str(err) and "timeout" in str(err) and seconds < 10
    assert not any((tmp_path / "cache").iterdir())  # no partial file left


# ---------------------------------------------------------------------------------------- 4. atomic writes
def test_interrupted_writes_keep_the_old_files(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run_generate(tiny, out) == 0
    assert generate.metrics_main([str(out / "manifest.json"), "--no-real-baseline"]) == 0
    old = {n: (out / n).read_bytes() for n in ("metrics.json", "manifest.json")}

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)  # killed between writing the new file and renaming it
    with pytest.raises(KeyboardInterrupt):
        generate.metrics_main([str(out / "manifest.json"), "--no-real-baseline"])
    with pytest.raises(KeyboardInterrupt):
        paths.save_results("x", {"a": 1}, folder=out)
    monkeypatch.undo()
    assert {n: (out / n).read_bytes() for n in old} == old
    assert not list(out.glob(".*.tmp")) and not (out / "x.json").exists()
    json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    with pytest.raises(ValueError, match="null"):
        paths.save_results("nan", {"fd": float("nan")}, folder=tmp_path)


# ---------------------------------------------------------------------------------- 5. checks before work
@pytest.mark.parametrize(
    "bad",
    [
        ["--nfe", "-5"],
        ["--num-samples", "0"],
        ["--batch-size", "0"],
        ["--threads", "0"],
        ["--nfe", "3", "3"],
        ["--samplers", "ddim", "diffusers_unipc_bh2", "--spacing", "uniform"],
        "out-under-a-file",
    ],
)
def test_generate_checks_everything_before_loading_the_model(tiny, tmp_path, monkeypatch, capsys, bad):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(generate, "load_unet", no_loading)
    out = tmp_path / "out"
    if bad == "out-under-a-file":
        (tmp_path / "file").write_text("")
        out, bad = tmp_path / "file" / "out", []
    t0 = time.perf_counter()
    assert generate.main(["--model", str(tiny), *ARGS, "--out", str(out), *bad]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip()
    assert err.startswith("accelerated-diffusion generate: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow  # a fresh interpreter importing diffusers
def test_generate_cli_reports_a_bad_argument_in_one_line_without_a_traceback(tiny, tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerated_diffusion.experiments.cli",
            "generate",
            "--model",
            str(tiny),
            "--nfe",
            "-5",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        res.stderr.strip().splitlines()[-1]
        == "accelerated-diffusion generate: error: --nfe values must be >= 1, got [-5]"
    )


@pytest.mark.parametrize(
    "bad",
    [
        ["--lr", "-1"],
        ["--lr", "nan"],
        ["--warmup", "-1"],
        ["--ema-decay", "1.5"],
        ["--max-train-images", "0"],
        ["--steps", "0"],
    ],
)
def test_train_checks_arguments_before_loading_data(tmp_path, monkeypatch, capsys, bad):
    def no_loading(*a, **k):
        raise AssertionError("the data was loaded before the arguments were checked")

    monkeypatch.setattr(train, "load_fashion_mnist", no_loading)
    assert train.main(["--out", str(tmp_path / "run"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error:") and bad[0] in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_train_classifier_checks_arguments_before_loading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as e:
        classifier.main(["--out", str(tmp_path / "c"), "--lr", "-1", "--epochs", "0"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------- 7. verified weights
def _corrupt_tensor_bytes(f: Path) -> None:
    """Overwrite the tensor data of a safetensors file with NaN bytes, leaving its header intact."""
    raw = bytearray(f.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header:] = b"\xff" * (len(raw) - header)
    f.write_bytes(bytes(raw))


def test_shipped_weights_are_verified_before_loading(tmp_path):
    for name in ("fmnist-ddpm", "fmnist-classifier"):
        assert verify_sha256sums(paths.data_dir() / name)  # the shipped folders record and match their sums
    ddpm = shutil.copytree(paths.data_dir() / "fmnist-ddpm", tmp_path / "fmnist-ddpm")
    _corrupt_tensor_bytes(ddpm / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ChecksumError, match="diffusion_pytorch_model.safetensors is corrupt"):
        models.load_unet(ddpm)
    clf = shutil.copytree(paths.data_dir() / "fmnist-classifier", tmp_path / "fmnist-classifier")
    _corrupt_tensor_bytes(clf / "model.safetensors")
    with pytest.raises(ChecksumError, match="model.safetensors is corrupt"):
        features.load_classifier(clf)
    _corrupt_tensor_bytes(clf / "test_stats.safetensors")
    with pytest.raises(ChecksumError, match="test_stats.safetensors"):
        features.load_reference_stats("test", clf)
    (ddpm / SHA256SUMS).write_text("not a sums file\n")
    with pytest.raises(ChecksumError, match="line 1"):
        models.load_unet(ddpm)


def test_corrupt_scheduler_config_and_truncated_gzip_name_the_file(tmp_path):
    folder = shutil.copytree(paths.data_dir() / "fmnist-ddpm", tmp_path / "m")
    (folder / "scheduler_config.json").write_text('{"beta_schedule": "lin')
    paths.write_sha256sums(folder, [f.name for f in folder.glob("*.json")] + ["diffusion_pytorch_model.safetensors"])
    with pytest.raises(ValueError, match=r"scheduler_config.json is not valid JSON"):
        models.load_scheduler_config(folder)
    gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(bytes(10_008))[:-20])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is not a valid gzip file"):
        data._read(gz, 8)


# ------------------------------------------------------------------------------------ 8. claims that hold
def test_resumed_training_does_not_repeat_loss_rows(tmp_path, monkeypatch):
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    cfg = {"block_out_channels": [8, 16], "batch_size": 2, "log_every": 1, "checkpoint_every": 2}
    tr = train.Trainer(cfg, tmp_path, images)
    real = train.Trainer.save_checkpoint
    monkeypatch.setattr(train.Trainer, "save_checkpoint", lambda self: real(self) if self.step == 2 else None)
    tr.run(steps=3, progress=False)  # rows for steps 1-3 logged, the last checkpoint at step 2: then killed
    monkeypatch.undo()
    resumed = train.Trainer(cfg, tmp_path, images)
    resumed.load_checkpoint()
    resumed.run(steps=4, progress=False)
    steps = [int(line.split(",")[0]) for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_time_limited_run_logs_each_step_once(tmp_path):
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    tr = train.Trainer({"block_out_channels": [8, 16], "batch_size": 2, "log_every": 1}, tmp_path, images)
    tr.run(steps=5, progress=False, time_limit_s=0.0)  # stops after its first step, which was just logged
    steps = [int(line.split(",")[0]) for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1]


def test_saved_init_noise_pipeline_reloads_with_diffusion_pipeline(tmp_path):
    from diffusers import DiffusionPipeline, UNet2DModel

    import accelerated_diffusion as ad
    from accelerated_diffusion.pipelines import InitNoiseDDPMPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    pipe = InitNoiseDDPMPipeline(unet=unet, scheduler=ad.AcceleratedDDPMScheduler())
    pipe.save_pretrained(tmp_path)
    back = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(back) is InitNoiseDDPMPipeline and type(back.scheduler) is ad.AcceleratedDDPMScheduler
    for p in (pipe, back):
        p.set_progress_bar_config(disable=True)
    run = [
        p(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
        for p in (pipe, back)
    ]
    assert torch.equal(run[0].images, run[1].images)


# ------------------------------------------------------------------------------- 9. a clean checkout after tests
def test_a_test_run_writes_results_to_a_temporary_folder():
    assert os.environ.get(paths.RESULTS_ENV), "the root conftest.py sets the results folder for every test"
    assert not paths.results_dir().is_relative_to(paths.repository_root())
    assert paths.save_results("probe", {"ok": True}).parent == paths.results_dir()


def test_a_chapter_run_by_nbval_leaves_the_shipped_results_untouched(tmp_path):
    """Item 9 end to end: a notebook that saves results, re-executed by ``pytest --nbval-lax`` from the repository
    (as ``make test`` does), writes into the temporary results folder, never into ``data/results``; the kernel
    starts before any fixture runs, so only a setting made at configuration time reaches it."""
    import nbformat

    name = f"probe_{os.getpid()}"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from accelerated_diffusion.experiments.paths import save_results\n"
            f"print(save_results({name!r}, {{'ok': True}}).parent.name)"
        )
    ]
    folder = paths.repository_root() / f".{name}"  # inside the repository (its conftest applies), outside chapters/
    folder.mkdir()
    notebook = folder / "probe.ipynb"
    shipped = paths.data_dir() / "results" / f"{name}.json"
    nbformat.write(nb, notebook)
    env = {k: v for k, v in os.environ.items() if k != paths.RESULTS_ENV}  # as a fresh `make test` starts
    try:
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", str(notebook)],
            cwd=paths.repository_root(),
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert not shipped.exists(), "a chapter run by the tests wrote into data/results"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shipped.unlink(missing_ok=True)
