"""Test-run settings for every test the repository collects, the chapters run by nbval included (a conftest in
``tests/`` would not apply to ``chapters/*.ipynb``): the results that tests and re-executed chapters save with
``save_results`` go to a temporary folder, so a test run leaves the checkout as it was.

The variable is set in ``pytest_configure``, before any notebook kernel starts (kernels inherit the environment),
in the main process and in every xdist worker."""

from __future__ import annotations

import os
import shutil
import tempfile

RESULTS_ENV = "ACCELERATED_DIFFUSION_RESULTS"  # accelerated_diffusion.experiments.paths.RESULTS_ENV
_created: list[str] = []


def pytest_configure(config):
    folder = tempfile.mkdtemp(prefix="accelerated-diffusion-results-")
    _created.append(folder)
    os.environ[RESULTS_ENV] = folder


def pytest_unconfigure(config):
    while _created:
        shutil.rmtree(_created.pop(), ignore_errors=True)
