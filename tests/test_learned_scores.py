"""The paper-checkpoint path of chapters/learned_scores.ipynb, offline.

1. With a hub id of the paper's checkpoints and no network, the notebook stops in its first code cell with
   ``ModelNotAvailableError`` naming the model and the download command.
2. A randomly initialised UNet of exactly ``google/ddpm-church-256``'s architecture (``data/reference/``), saved
   to and loaded from a local folder, runs through the whole notebook: 1 image at 5 NFE on the ``uniform`` grid,
   256 x 256 x 3.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

from accelerated_diffusion import models  # noqa: E402
from conftest import save_random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "learned_scores.ipynb"
NOTHING_ELSE = dict(
    figure1_nfes=[], pf_num_samples=0, fd_num_samples=0, peer_check_samples=0, control_num_samples=0, results_name=None
)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: nothing to fall back on


def _execute(tmp_path, **parameters):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(CHAPTER),
        str(out),
        parameters=parameters,
        cwd=str(CHAPTER.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, 4)


# One checkpoint through the whole notebook (a kernel start each); every paper checkpoint's offline error is
# tested directly on ``models.load_unet`` in tests/test_models.py (the same code path, the id aside).
@pytest.mark.parametrize("model_id", models.PAPER_MODELS[:1])
def test_paper_checkpoint_offline_stops_at_once(tmp_path, offline_hub, model_id):
    t0 = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as info:
        _execute(tmp_path, model_id=model_id, **NOTHING_ELSE)
    err = info.value
    assert err.ename == "ModelNotAvailableError"
    assert model_id in err.evalue and "download" in err.evalue
    nb = nbformat.read(tmp_path / "out.ipynb", 4)
    code = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [1]  # the first cell after the parameters: nothing was computed before
    assert time.perf_counter() - t0 < 120  # kernel start and imports only; no network retries


@pytest.mark.slow
def test_church_architecture_random_weights_one_image(tmp_path, offline_hub):
    folder = save_random_model(tmp_path / "ddpm-church-256-random", "ddpm-church-256", seed=0)
    nb = _execute(
        tmp_path,
        model_id=str(folder),
        figure2_nfe=5,
        figure2_num_samples=1,
        grids=["uniform"],
        figure_samplers=["accelerated_ode"],
        **NOTHING_ELSE,
    )
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "images (3, 256, 256)" in text
    # the authors' default grid
    assert re.search(r"uniform +5 NFE: 800, 600, 400, 200, 0", text), text[:2000]
    figure2 = next(c for c in nb.cells if c.cell_type == "code" and "fig2 = figure_rows" in c.source)
    assert any("image/png" in o.get("data", {}) for o in figure2.outputs)
    assert not (ROOT / "data" / "results" / "None.json").exists()
