"""Every results file records where it comes from: ``paths.provenance`` (package version, git commit and whether
the tree was modified, Python and library versions, the run's parameters) as the top-level ``provenance`` key that
``paths.save_results`` writes, and the library's writers pass their settings."""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess

import diffusers
import numpy as np
import pytest
import torch

import accelerated_diffusion
from accelerated_diffusion.experiments import exact_1d, generate, model_quality, paths

FIELDS = {"package", "package_version", "commit", "tree_modified", "python", "versions", "parameters"}
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder, *args) -> str:
    cmd = [
        "git",
        "-C",
        str(folder),
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.org",
        "-c",
        "commit.gpgsign=false",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with one commit (code, a results file, a chapter) used as the repository root."""
    root = tmp_path / "repo"
    for rel, text in {"src/code.py": "x = 1\n", "data/results/r.json": "{}\n", "chapters/c.ipynb": "{}\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    monkeypatch.setenv(paths.ROOT_ENV, str(root))
    return root


def test_provenance_fields_and_types():
    p = paths.provenance({"nfe": [5, 10], "sampler": "ddim"})
    assert set(p) == FIELDS
    assert p["package"] == "accelerated_diffusion" and p["package_version"] == accelerated_diffusion.__version__
    assert p["commit"] is None or (isinstance(p["commit"], str) and len(p["commit"]) in (40, 64))
    assert p["tree_modified"] in (None, True, False) and (p["commit"] is None) == (p["tree_modified"] is None)
    assert p["python"] == platform.python_version()
    assert p["versions"] == {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__}
    assert p["parameters"] == {"nfe": [5, 10], "sampler": "ddim"}
    assert paths.provenance()["parameters"] == {}
    json.loads(paths.dumps_strict(p))


@needs_git
def test_commit_is_the_head_of_the_checkout():
    root = paths.repository_root()
    try:
        top, head = git(root, "rev-parse", "--show-toplevel", "HEAD").splitlines()
    except subprocess.CalledProcessError:
        pytest.skip("the package is not imported from a git checkout")
    assert top and paths.provenance()["commit"] == head


@needs_git
def test_tree_modified_follows_the_tracked_code(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert (paths.provenance()["commit"], paths.provenance()["tree_modified"]) == (head, False)
    (repo / "untracked.py").write_text("y = 2\n")  # untracked files are not the committed code
    (repo / "data" / "results" / "r.json").write_text('{"a": 1}\n')  # what the book's build writes itself
    (repo / "chapters" / "c.ipynb").write_text('{"outputs": []}\n')
    assert paths.provenance()["tree_modified"] is False
    (repo / "src" / "code.py").write_text("x = 2\n")
    assert (paths.provenance()["commit"], paths.provenance()["tree_modified"]) == (head, True)
    git(repo, "commit", "-q", "-am", "two")
    p = paths.provenance()
    assert p["commit"] == git(repo, "rev-parse", "HEAD") != head and p["tree_modified"] is False


@needs_git
def test_no_commit_outside_a_git_checkout(repo, tmp_path, monkeypatch):
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git program
    assert {k: paths.provenance()[k] for k in ("commit", "tree_modified")} == {"commit": None, "tree_modified": None}
    monkeypatch.setenv("PATH", path)
    assert paths.provenance()["commit"] is not None
    plain = tmp_path / "plain"
    plain.mkdir()
    sub = repo / "src"  # a folder inside some other repository is not a checkout of its own
    for root in (plain, sub):
        monkeypatch.setenv(paths.ROOT_ENV, str(root))
        p = paths.provenance()
        assert (p["commit"], p["tree_modified"]) == (None, None), root

    def hangs(*a, **k):
        raise subprocess.TimeoutExpired(a[0], paths.GIT_TIMEOUT_S)

    monkeypatch.setenv(paths.ROOT_ENV, str(repo))
    monkeypatch.setattr(subprocess, "run", hangs)
    assert paths.provenance()["commit"] is None


def test_save_results_writes_the_provenance_first(tmp_path):
    obj = {"results": {"ddim": [1.0, 0.5]}, "seed": 3}
    before = copy.deepcopy(obj)
    params = {"nfe": [5, 10], "seed": 3, "cases": (("paper", 30),)}
    path = paths.save_results("probe", obj, folder=tmp_path, params=params)
    assert obj == before
    saved = json.loads(path.read_text())
    assert list(saved)[0] == "provenance" and set(saved["provenance"]) == FIELDS
    assert saved["provenance"]["parameters"] == {"nfe": [5, 10], "seed": 3, "cases": [["paper", 30]]}
    assert {k: v for k, v in saved.items() if k != "provenance"} == obj
    assert paths.load_results("probe", folder=tmp_path) == saved
    expected = paths.provenance(params)
    assert {k: v for k, v in saved["provenance"].items() if k != "parameters"} == {
        k: v for k, v in expected.items() if k != "parameters"
    }


@pytest.mark.parametrize(
    "obj, params, error, match",
    [
        ([1, 2], None, TypeError, "needs a dict"),
        ({"provenance": {}, "x": 1}, None, ValueError, "already has a 'provenance'"),
        ({"x": 1}, [1], TypeError, "must be a dict"),
        ({"x": 1}, {"folder": paths.repository_root()}, TypeError, "JSON-serialisable"),
        ({"x": 1}, {"c0": float("nan")}, ValueError, "null"),
    ],
)
def test_save_results_refuses_what_it_cannot_record(tmp_path, obj, params, error, match):
    with pytest.raises(error, match=match):
        paths.save_results("refused", obj, folder=tmp_path, params=params)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- the library's writers pass their settings
def test_exact_1d_records_its_keyword_arguments(tmp_path, monkeypatch):
    def fake_jobs(jobs, workers=1):  # no computation: a TV of 1/T, refinement unchanged
        return [
            {"tv": 1.0 / j[3], "tv_fine": 1.0 / j[3], "rel_change": 0.0, "folded": False, "mean_map_folds": 0}
            for j in jobs
        ]

    monkeypatch.setattr(exact_1d, "run_jobs", fake_jobs)
    target = {"weights": [0.8, 0.2], "means": [-1.0, 1.5], "variances": [0.09, 0.0025]}
    exact_1d.run_experiment(
        target,
        paper_Ts=(10, 20, 30),
        linear_Ts=(5, 8, 10),
        c0=1.5,
        x_min={"paper": 5, "linear": 4},
        explore_targets=(),
        name="exact_probe",
        folder=tmp_path,
    )
    par = paths.load_results("exact_probe", folder=tmp_path)["provenance"]["parameters"]
    assert par["target"] == target and par["paper_Ts"] == [10, 20, 30] and par["linear_Ts"] == [5, 8, 10]
    assert (par["c0"], par["c1"]) == (1.5, 4.0)
    assert par["x_min"] == {**exact_1d.FIT_MIN_NFE, "paper": 5, "linear": 4}
    assert {"gaussian_cases", "refinement_cases", "explore_targets", "explore_Ts"} <= set(par)


def test_exact_1d_refuses_unrecordable_settings_before_the_sweeps(tmp_path, monkeypatch):
    def no_sweep(*a, **k):
        raise AssertionError("the sweeps started before the settings were checked")

    monkeypatch.setattr(exact_1d, "run_jobs", no_sweep)
    target = {"weights": np.array([1.0]), "means": [0.0], "variances": [1.0]}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        exact_1d.run_experiment(target, name="refused", folder=tmp_path)


def test_metrics_command_records_its_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "compute_metrics", lambda *a, **k: {"results": [], "real_data_fd": {}})
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "results"))
    manifest = tmp_path / "run" / "manifest.json"
    manifest.parent.mkdir()
    assert generate.metrics_main([str(manifest), "--results-name", "metrics_probe", "--reference", "train"]) == 0
    par = paths.load_results("metrics_probe")["provenance"]["parameters"]
    assert par["manifest"] == str(manifest) and par["reference"] == "train" and par["results_name"] == "metrics_probe"
    assert par["no_real_baseline"] is False and par["classifier"] is None


def test_model_quality_command_records_its_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(model_quality, "measure", lambda checkpoints, **k: {"checkpoints": sorted(checkpoints)})
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path))
    folder = str(paths.data_dir() / "fmnist-ddpm")  # arguments are checked before any work: a real model folder
    argv = [
        "--model",
        f"100={folder}",
        "--model",
        f"200={folder}",
        "--nfe",
        "50",
        "--name",
        "mq_probe",
        "--cache",
        str(tmp_path),
    ]
    assert model_quality.main(argv) == 0
    saved = paths.load_results("mq_probe")
    assert saved["checkpoints"] == [100, 200]
    par = saved["provenance"]["parameters"]
    assert par["model"] == [[100, folder], [200, folder]] and par["nfe"] == 50
    assert not {"cache", "name", "features_only"} & set(par)  # where things are kept does not decide the numbers
