"""Papermill parameter files checked against their notebook's ``parameters`` cell
(accelerated_diffusion.experiments.params, ``accelerated-diffusion run-chapter``)."""

import json
from pathlib import Path

import pytest

from accelerated_diffusion.experiments import cli, params

ROOT = Path(__file__).resolve().parents[1]
PARAM_FILES = sorted((ROOT / "chapters" / "params").glob("*.yaml"))
LEARNED = ROOT / "chapters" / "learned_scores.ipynb"


@pytest.mark.parametrize("path", PARAM_FILES, ids=[p.name for p in PARAM_FILES])
def test_every_shipped_parameter_file_fits_the_notebook_it_names(path):
    values, notebook = params.read_param_file(path)
    assert notebook is not None and notebook.is_file(), f"{path.name} needs a '# notebook: chapters/X.ipynb' line"
    assert "notebook" not in values  # a comment, not a key papermill would inject
    assert params.check_param_file(path) == values and values


def test_every_chapter_has_a_parseable_parameters_cell():
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        assert params.notebook_parameters(nb), nb.name
    p = params.notebook_parameters(LEARNED)
    assert p["model_id"].default == "data/fmnist-ddpm" and p["results_name"].none_ok and not p["seed"].none_ok


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"fd_num_sample": 10}, r"unknown parameter 'fd_num_sample' \(did you mean 'fd_num_samples'.*takes model_id, "),
        ({"model": "x"}, r"unknown parameter 'model'.*model_id"),
        ({"seed": None}, r"seed: None is not allowed"),
        ({"seed": True}, r"seed: expected an int, got True"),
        ({"num_boot": 2.5}, r"num_boot: expected an int"),
        ({"fd_num_samples": "many"}, r"fd_num_samples: expected an int"),
        ({"figure1_nfes": [4, "5"]}, r"figure1_nfes: every entry must be an int, got '5'"),
        ({"grids": "uniform"}, r"grids: expected a list"),
        ({"model_id": 3}, r"model_id: expected a string"),
    ],
)
def test_a_misspelt_key_or_a_wrong_type_is_an_error(bad, match):
    with pytest.raises(params.ParameterError, match=match):
        params.check_parameters(bad, LEARNED)


def test_what_fits_is_accepted():
    ok = {"results_name": None, "threads": 2, "grids": ["uniform"], "figure1_nfes": [], "device": "cuda", "seed": 3}
    assert params.check_parameters(ok, LEARNED) == ok
    with pytest.raises(params.ParameterError, match="mapping"):
        params.check_parameters(["seed"], LEARNED)


def _write(path, text):
    path.write_text(text)
    return path


def test_parameter_file_header_and_errors(tmp_path):
    f = _write(tmp_path / "x.yaml", "# notebook: chapters/learned_scores.ipynb\nseed: 1\n")
    assert params.read_param_file(f) == ({"seed": 1}, ROOT / "chapters" / "learned_scores.ipynb")
    assert params.check_param_file(f, LEARNED) == {"seed": 1}
    with pytest.raises(params.ParameterError, match="is for .*learned_scores.ipynb, not .*theory.ipynb"):
        params.check_param_file(f, ROOT / "chapters" / "theory.ipynb")
    anon = _write(tmp_path / "anon.yaml", "seed: 1\n")
    with pytest.raises(params.ParameterError, match="names no notebook"):
        params.check_param_file(anon)
    typo = _write(tmp_path / "typo.yaml", "# notebook: chapters/learned_scores.ipynb\nsede: 1\n")
    with pytest.raises(params.ParameterError, match=r"typo.yaml: unknown parameter 'sede' \(did you mean 'seed'"):
        params.check_param_file(typo)
    with pytest.raises(params.ParameterError, match="mapping"):
        params.check_param_file(_write(tmp_path / "list.yaml", "- 1\n"), LEARNED)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        params.check_param_file(tmp_path / "missing.yaml", LEARNED)


def _tiny_notebook(path):
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "id": "params",
                "metadata": {"tags": ["parameters"]},
                "source": "x = 1\nname = 'a'\n",
                "outputs": [],
                "execution_count": None,
            },
            {
                "cell_type": "code",
                "id": "work",
                "metadata": {},
                "source": "open('result.txt', 'w').write(f'{name}{x * 2}')\n",
                "outputs": [],
                "execution_count": None,
            },
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return path


def test_run_chapter_refuses_a_misspelt_key_before_running(tmp_path, capsys, monkeypatch):
    nb = _tiny_notebook(tmp_path / "tiny.ipynb")
    f = _write(tmp_path / "p.yaml", "xx: 2\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run-chapter", str(nb), "-f", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown parameter 'xx' (did you mean 'x'?)" in err and "takes x, name" in err
    assert not (tmp_path / "tiny.p.ipynb").exists() and not (tmp_path / "result.txt").exists()
    ok = _write(tmp_path / "ok.yaml", "x: 2\n")
    assert cli.main(["run-chapter", str(nb), "-f", str(ok), "--check-only"]) == 0
    assert cli.main(["run-chapter", str(nb), "-f", str(ok), "-o", str(nb)]) == 2
    assert "the notebook itself" in capsys.readouterr().err
    (tmp_path / "mine.ipynb").write_text("{}")
    assert cli.main(["run-chapter", str(nb), "-f", str(ok), "-o", "mine.ipynb"]) == 2
    assert "not a notebook papermill wrote" in capsys.readouterr().err
    assert (tmp_path / "mine.ipynb").read_text() == "{}"


@pytest.mark.slow
def test_run_chapter_runs_papermill_with_the_checked_parameters(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    nb = _tiny_notebook(tmp_path / "tiny.ipynb")
    f = _write(tmp_path / "p.yaml", "x: 21\nname: b\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run-chapter", str(nb), "-f", str(f)]) == 0
    assert (tmp_path / "result.txt").read_text() == "b42"  # ran in the notebook's folder with the file's values
    assert "papermill" in json.loads((tmp_path / "tiny.p.ipynb").read_text())["metadata"]
    assert cli.main(["run-chapter", str(nb), "-f", str(f)]) == 0  # its own earlier output may be replaced
