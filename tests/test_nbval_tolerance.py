"""The chapters' checked numbers hold on any machine: cells tagged ``nbval-approx`` compare numbers to one unit of
the last printed digit plus 0.1 % (``tests/nbval_tolerance.py``), every other checked cell to the letter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nbval_tolerance as tol

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "ref, test",
    [
        ("11.2", "11.1"),  # the rounding boundary that failed a fresh clone (committed 11.2, re-executed 11.1)
        ("1.03e+03", "1.04e+03"),  # one unit of the last digit in scientific notation (10)
        ("58", "57.9"),  # %.3g drops the fraction at an integer value
        ("-0.70", "-0.71"),
        ("7316", "7317"),
        ("2.070e+00", "2.0702e+00"),
    ],
)
def test_numbers_one_unit_of_the_last_digit_apart_agree(ref, test):
    assert tol.numbers_agree(ref, test)


@pytest.mark.parametrize(
    "ref, test",
    [
        ("11.2", "11.4"),
        ("301", "305"),  # a changed Fréchet distance
        ("-0.70", "-0.80"),  # a changed slope
        ("1.03e+03", "1.05e+03"),
        ("0.0", "nan"),
        ("5.31", "-5.31"),
    ],
)
def test_numbers_further_apart_do_not(ref, test):
    assert not tol.numbers_agree(ref, test)


def test_text_between_numbers_must_match_exactly():
    ref = "acc. ODE    77.2 [46.1, 139]*   better"
    assert tol.first_difference(ref, "acc. ODE    77.3 [46.1, 139]*   better") is None
    assert tol.first_difference(ref, "acc. ODE    77.2 [46.1, 139]    better")  # a lost "not separated" mark
    assert tol.first_difference(ref, "acc. ODE    77.2 [46.1, 139]*   worse")  # a changed verdict
    assert tol.first_difference(ref, "acc. ODE    77.2 [46.1]*   better")  # a lost number
    assert tol.outputs_agree(["a 1.00", {"text/plain": "b 2.0"}], ["a 1.01", {"text/plain": "b 2.1"}]) is None
    assert tol.outputs_agree(["a 1.00"], ["a 1.00", "extra"])


def _cell(nbformat, source: str, printed: str, tags: list[str]):
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": tags})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    cell.execution_count = 1
    return cell


def test_nbval_compares_tagged_cells_with_tolerance_and_the_rest_exactly():
    """End to end through pytest and nbval, as ``make test`` runs the chapters: a last-digit change passes in a
    tagged cell and fails in an untagged one; a real change fails in a tagged cell."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell(nbformat, "print('FD 88 [0, 11.1]*')", "FD 88 [0, 11.2]*\n", ["nbval-check-output", tol.TAG]),
        _cell(nbformat, "print('FD 88 [0, 11.1]*')", "FD 88 [0, 11.2]*\n", ["nbval-check-output"]),
        _cell(nbformat, "print('FD 88 [0, 11.5]*')", "FD 88 [0, 11.2]*\n", ["nbval-check-output", tol.TAG]),
        _cell(nbformat, "print('FD 88 [0, 11.1]')", "FD 88 [0, 11.2]*\n", ["nbval-check-output", tol.TAG]),
    ]
    folder = ROOT / f".nbval_probe_{os.getpid()}"  # inside the repository, so its conftest.py applies
    folder.mkdir()
    try:
        nbformat.write(nb, folder / "probe.ipynb")
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--nbval-lax",
                "-rA",
                str(folder / "probe.ipynb"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = res.stdout
    assert "1 passed" in out and "3 failed" in out, out[-3000:]
    assert "PASSED" in out and "probe.ipynb::Cell 0" in out.split("PASSED", 1)[1].splitlines()[0], out[-3000:]


def test_every_tolerant_cell_is_a_checked_cell():
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            tags = cell.get("metadata", {}).get("tags", [])
            if tol.TAG in tags:
                assert "nbval-check-output" in tags, f"{path.name} cell {i}: {tol.TAG} without nbval-check-output"
