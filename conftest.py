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
