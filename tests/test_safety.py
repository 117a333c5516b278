"""Nothing of the user's is lost, a run folder holds one run, only what is checked is trusted (issue 18, items 3, 4,
6 and the `train` checks of item 7): one test per probe of the issue, each failing on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from accelerated_diffusion import models
from accelerated_diffusion.integrity import EXPORT_MARKER, SHA256SUMS, ChecksumError, verify_sha256sums
from accelerated_diffusion.experiments import classifier, data, features, generate, paths, train
from test_generate import tiny_model

TINY = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention": True, "batch_size": 2, "log_every": 1}
TINY_ARGV = [
    "--block-out-channels",
    "8",
    "16",
    "--batch-size",
    "2",
    "--log-every",
    "1",
    "--max-train-images",
    "8",
    "--no-progress",
]
GEN_ARGS = [
    "--samplers",
    "ddim",
    "--nfe",
    "2",
    "--num-samples",
    "4",
    "--batch-size",
    "2",
    "--threads",
    "1",
    "--no-progress",
]
ZEROS = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the training data is loaded (every check must come first)."""

    def refuse(*a, **k):
        raise AssertionError("the data was loaded before the arguments were checked")

    monkeypatch.setattr(train, "load_fashion_mnist", refuse)
    monkeypatch.setattr(data, "load_fashion_mnist", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def _run(out: Path, steps: int = 1) -> train.Trainer:
    """A tiny training run in ``out`` with a checkpoint."""
    tr = train.Trainer({**TINY, "steps": steps}, out, ZEROS)
    tr.run(progress=False)
    return tr


def _one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(prefix) and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ item 3: no destination the program did not make
def test_export_equal_to_inside_or_above_out_is_refused_before_any_work(tmp_path, no_data, capsys):
    out = tmp_path / "run"
    _run(out)
    checkpoint = (out / train.CHECKPOINT).read_bytes()
    for export in (out, out / "export", tmp_path):
        argv = ["--out", str(out), "--steps", "2", *TINY_ARGV, "--resume", "--export", str(export)]
        assert train.main(argv) == 2
        assert "--export" in _one_line_error(capsys, "train: error:")
        assert (out / train.CHECKPOINT).read_bytes() == checkpoint  # the run can still be resumed
    assert not (out / "export").exists()


def test_export_never_replaces_a_folder_it_did_not_write(tmp_path):
    tr = _run(tmp_path / "run")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a folder this command wrote"):
        train.export_diffusers(tr, user)
    assert (user / "notes.txt").read_text() == "precious" and not (user / EXPORT_MARKER).exists()
    export = train.export_diffusers(tr, tmp_path / "export")  # new: written, with its marker
    assert json.loads((export / EXPORT_MARKER).read_text())["kind"] == train.EXPORT_KIND
    train.export_diffusers(tr, export)  # an earlier export of the same kind: replaced
    (export / "notes.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="notes.txt"):
        train.export_diffusers(tr, export)
    assert (export / "notes.txt").exists()
    mu, sigma = torch.zeros(128, dtype=torch.float64), torch.eye(128, dtype=torch.float64)
    clf = classifier.write_classifier(tmp_path / "clf", features.FashionCNN(), {}, mu, sigma, "card")
    with pytest.raises(FileExistsError, match="another kind"):  # a classifier folder is no DDPM export
        train.export_diffusers(tr, clf)
    # the shipped folder, written before the marker existed, is still recognised as an export (card and figures too)
    train.check_export_dest(shutil.copytree(paths.data_dir() / "fmnist-ddpm", tmp_path / "shipped"))


def test_train_classifier_never_replaces_a_folder_it_did_not_write(tmp_path, no_data, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    for out in (user, tmp_path):  # a folder with user files, a parent folder
        with pytest.raises(SystemExit) as e:
            classifier.main(["--out", str(out)])
        assert e.value.code == 2 and "--out" in _one_line_error(
            capsys, "accelerated-diffusion train-classifier: error:"
        )
    with pytest.raises(SystemExit) as e:
        classifier.main(["--out", str(tmp_path / "new"), "--seed", "-1"])
    assert e.value.code == 2 and "--seed" in _one_line_error(capsys, "accelerated-diffusion train-classifier: error:")
    mu, sigma = torch.zeros(128, dtype=torch.float64), torch.eye(128, dtype=torch.float64)
    with pytest.raises(FileExistsError):
        classifier.write_classifier(user, features.FashionCNN(), {"feature_dim": 128}, mu, sigma, "card")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_resume_without_a_checkpoint_is_an_error(tmp_path, no_data, capsys):
    assert train.main(["--out", str(tmp_path / "run"), "--steps", "2", *TINY_ARGV, "--resume"]) == 2
    assert "no checkpoint" in _one_line_error(capsys, "train: error:")
    assert not (tmp_path / "run").exists()


def test_written_files_and_folders_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        f = paths.atomic_write_text(tmp_path / "a.json", "{}")
        tr = _run(tmp_path / "run")
        export = train.export_diffusers(tr, tmp_path / "export")
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run" / train.CHECKPOINT).stat().st_mode & 0o777 == 0o644
    assert export.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in export.iterdir())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to kill a writer")
def test_a_killed_write_leaves_no_orphan_after_the_next_run(tmp_path):
    def killed_child(write) -> None:
        pid = os.fork()
        if pid == 0:  # the child dies by SIGKILL in the middle of the write
            try:
                write()
            finally:
                os._exit(3)
        os.waitpid(pid, 0)

    target = tmp_path / "checkpoint.pt"

    def file_write():
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # only in the child
        paths.atomic_write_bytes(target, b"new" * 1000)

    def folder_write():
        with paths.replace_folder(tmp_path / "export", "k") as tmp:
            (tmp / "config.json").write_text("{}")
            os.kill(os.getpid(), signal.SIGKILL)

    killed_child(file_write)
    killed_child(folder_write)
    assert len(list(tmp_path.iterdir())) == 2 and not target.exists()  # what the killed writers left
    live = tmp_path / f".checkpoint.pt.{os.getppid()}-0000.tmp"  # a running process's write (our parent's)
    live.write_bytes(b"")
    paths.atomic_write_bytes(target, b"ok")
    with paths.replace_folder(tmp_path / "export", "k") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "checkpoint.pt", "export"])


# --------------------------------------------------------------------------------- item 4: a run folder, one run
def _gen(tiny, out, *extra):
    return generate.main(["--model", str(tiny), *GEN_ARGS, "--out", str(out), *extra])


def test_a_second_generate_into_the_same_folder_fails_at_once(tiny, tmp_path, monkeypatch, capsys):
    out, second = tmp_path / "run", []
    real = generate.save_batch

    def with_a_concurrent_run(*a, **k):
        if not second:  # while the first run writes its first batch, a second one starts into the same folder
            second.append(None)
            t0 = time.perf_counter()
            second[0] = (_gen(tiny, out, "--resume"), time.perf_counter() - t0)
        return real(*a, **k)

    monkeypatch.setattr(generate, "save_batch", with_a_concurrent_run)
    assert _gen(tiny, out) == 0
    ((status, seconds),) = second
    assert status == 2 and seconds < 5
    assert "in use by another process" in capsys.readouterr().err
    assert all(b["sha256"] for r in generate.check_manifest(out)["runs"] for b in r["batches"])


def test_resume_refuses_other_weights(tiny, tmp_path, monkeypatch, capsys):
    model = shutil.copytree(tiny, tmp_path / "model")
    out = tmp_path / "run"
    real, calls = generate.save_batch, []

    def killed_after_one_batch(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(generate, "save_batch", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _gen(model, out)
    monkeypatch.undo()
    run = json.loads((out / generate.RUN_FILE).read_text())
    assert len(run["weights_sha256"]) == 64
    unet = models.load_unet(model)
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    unet.save_pretrained(model)  # the model folder changed under the same path
    before = generate.files_present(out)
    assert _gen(model, out, "--resume") == 2
    assert "other weights" in capsys.readouterr().err
    assert generate.files_present(out) == before


def test_metrics_refuses_a_batch_swapped_for_another_runs_file_with_the_same_seeds(tiny, tmp_path):
    out = tmp_path / "run"
    assert _gen(tiny, out) == 0
    name = generate.save_batch(torch.randn(2, 1, 28, 28), [0, 1], tmp_path / "other", 0, "pt")[0]
    shutil.copyfile(tmp_path / "other" / name, out / "ddim" / "nfe002" / name)  # same name, same seeds
    with pytest.raises(generate.IncompleteRunError, match="differs from the file the run wrote"):
        generate.check_manifest(out)
    assert generate.metrics_main([str(out), "--no-real-baseline"]) == 2


def test_metrics_never_writes_over_the_run_or_a_users_file(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert _gen(tiny, out) == 0
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    kept = {f: f.read_bytes() for f in (out / generate.MANIFEST, out / generate.RUN_FILE, tmp_path / "notes.json")}
    for target in kept:
        assert generate.metrics_main([str(out), "--out", str(target), "--no-real-baseline"]) == 2
        assert "--out" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in kept} == kept


def test_resume_on_a_complete_run_keeps_its_metrics(tiny, tmp_path):
    out = tmp_path / "run"
    assert _gen(tiny, out) == 0
    assert generate.metrics_main([str(out), "--no-real-baseline"]) == 0
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != paths.LOCK_FILE}  # noqa: E731
    before = files()
    assert generate.METRICS in before
    assert _gen(tiny, out, "--resume") == 0
    assert files() == before


# ----------------------------------------------------------------------------- item 6: trust only what is checked
class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling this calls open(path, "w"): code run by loading the file
        return (open, (self.path, "w"))


def test_resume_loads_the_checkpoint_with_weights_only(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sentinel = tmp_path / "code-ran"
    torch.save({"cfg": {}, "step": 1, "payload": _Payload(sentinel)}, out / train.CHECKPOINT)
    with pytest.raises(ValueError, match="weights only"):
        train.Trainer({**TINY, "steps": 2}, out, ZEROS).load_checkpoint()
    assert not sentinel.exists()
    monkeypatch.setattr(train, "load_fashion_mnist", lambda *a, **k: pytest.fail("data loaded"))
    assert train.main(["--out", str(out), "--steps", "2", *TINY_ARGV, "--resume"]) == 2
    assert not sentinel.exists()
    assert "weights only" in _one_line_error(capsys, "train: error:")
    run = tmp_path / "real"
    _run(run)  # a real checkpoint holds only what weights_only=True loads
    assert torch.load(run / train.CHECKPOINT, weights_only=True)["step"] == 1


@pytest.mark.parametrize("damage", ["deleted", "emptied", "line missing", "crlf-converted"])
def test_a_shipped_folder_without_complete_sums_is_refused(tmp_path, damage):
    ddpm = shutil.copytree(paths.data_dir() / "fmnist-ddpm", tmp_path / "ddpm")
    clf = shutil.copytree(paths.data_dir() / "fmnist-classifier", tmp_path / "clf")
    for folder, weights in ((ddpm, "diffusion_pytorch_model.safetensors"), (clf, "model.safetensors")):
        sums = folder / SHA256SUMS
        lines = sums.read_text().splitlines(keepends=True)
        if damage == "deleted":
            sums.unlink()
        elif damage == "emptied":
            sums.write_text("")
        elif damage == "line missing":
            sums.write_text("".join(line for line in lines if weights not in line))
        else:  # CRLF in the sums file itself is read alike; the tampered weights are still found
            sums.write_bytes(sums.read_bytes().replace(b"\n", b"\r\n"))
        raw = bytearray((folder / weights).read_bytes())
        raw[-64:] = b"\xff" * 64  # tampered tensor bytes, header intact: would load as NaN weights
        (folder / weights).write_bytes(bytes(raw))
    with pytest.raises(ChecksumError):
        models.load_unet(ddpm)
    with pytest.raises(ChecksumError):
        features.load_classifier(clf)


def test_sums_with_crlf_line_endings_check_intact_files(tmp_path):
    ddpm = shutil.copytree(paths.data_dir() / "fmnist-ddpm", tmp_path / "ddpm")
    (ddpm / SHA256SUMS).write_bytes((ddpm / SHA256SUMS).read_bytes().replace(b"\n", b"\r\n"))
    assert "diffusion_pytorch_model.safetensors" in verify_sha256sums(ddpm)
    (ddpm / "config.json").write_bytes((ddpm / "config.json").read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(ChecksumError, match="CRLF"):  # a converted checkout is named as such
        models.load_unet(ddpm)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_gitattributes_keep_model_folders_and_results_byte_exact_under_autocrlf(tmp_path):
    """A checkout with ``core.autocrlf=true`` (Git for Windows' default) leaves the shipped folders and the results
    byte for byte as committed, so their sums still match."""
    root = paths.repository_root()
    src = tmp_path / "src"
    for rel in ("data/fmnist-ddpm", "data/fmnist-classifier", "data/reference", "data/results"):
        shutil.copytree(root / rel, src / rel)
    shutil.copyfile(root / ".gitattributes", src / ".gitattributes")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *cmd], cwd=src, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [*git, "-c", "core.autocrlf=true", "clone", "-q", str(src), str(tmp_path / "clone")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    clone = tmp_path / "clone"
    for f in src.rglob("*"):
        if f.is_file() and f.relative_to(src).parts[0] == "data":
            assert (clone / f.relative_to(src)).read_bytes() == f.read_bytes(), f.relative_to(src)
    for name in ("fmnist-ddpm", "fmnist-classifier"):
        assert verify_sha256sums(clone / "data" / name)


# ------------------------------------------------------------------------ item 7: train arguments before any work
@pytest.mark.parametrize(
    "bad",
    [
        ["--block-out-channels", "7", "9"],
        ["--block-out-channels", "8", "16", "16", "16"],
        ["--block-out-channels", "8"],
        ["--layers-per-block", "0"],
        ["--time-limit-min", "0"],
        ["--export-only"],
        ["--init-from", "no-such-folder"],
        ["--device", "no-such-device"],
        ["--checkpoint-every", "0"],
        ["--seed", "-1"],
    ],
)
def test_train_checks_every_argument_before_loading_data(tmp_path, no_data, capsys, bad):
    argv = ["--out", str(tmp_path / "run"), "--steps", "2", *TINY_ARGV, *bad]  # a repeated option: the last wins
    assert train.main(argv) == 2
    assert bad[0] in _one_line_error(capsys, "train: error:")
    assert not (tmp_path / "run").exists()
