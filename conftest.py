"""Set-up for every test run from the repository: the unit tests (tests/) and the chapters re-executed by nbval
(chapters/).

Whatever a test or a chapter saves with ``save_results`` goes to a temporary folder, so a test run leaves the
checkout as it was. It is set in ``pytest_configure``, before any notebook kernel starts (nbval starts a
chapter's kernel before fixtures run), so the kernels inherit it; the shipped ``data/results`` files are still
read where the temporary folder has no such file (``load_results``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from accelerated_diffusion.experiments.paths import RESULTS_ENV

_created: list[str] = []


def pytest_configure(config):
    if RESULTS_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="accelerated-diffusion-results-")
        os.environ[RESULTS_ENV] = folder
        _created.append(folder)


def pytest_unconfigure(config):
    for folder in _created:
        os.environ.pop(RESULTS_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _load_nbval_tolerance():
    """``tests/nbval_tolerance.py`` (the numeric comparison of cells tagged ``nbval-approx``), loaded by path so
    the chapters' collection does not depend on ``tests/`` being importable."""
    import importlib.util
    import sys
    from pathlib import Path

    if "nbval_tolerance" not in sys.modules:
        spec = importlib.util.spec_from_file_location("nbval_tolerance", Path(__file__).parent / "tests" / "nbval_tolerance.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["nbval_tolerance"] = module
        spec.loader.exec_module(module)
    return sys.modules["nbval_tolerance"]


# The chapters that take longest under nbval, started first: with ``--dist loadfile`` each file goes to one worker
# in collection order, so a long chapter collected last would run alone at the end while the other worker idles.
LONGEST_FIRST = ("chapters/learned_scores.ipynb", "chapters/rates_exact_scores.ipynb")


def pytest_collection_modifyitems(session, config, items):
    tolerance = None
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            tolerance = tolerance or _load_nbval_tolerance()
            tolerance.install(item)

    def rank(item):
        path = str(item.path).replace(os.sep, "/")
        for i, name in enumerate(LONGEST_FIRST):
            if path.endswith(name):
                return i
        return len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the rest is kept
