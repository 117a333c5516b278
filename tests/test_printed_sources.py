"""Library functions whose source the book prints must fit the book's text column.

Several chapters show an update rule with ``print(inspect.getsource(...))``.  The library is formatted at 120
columns, so these functions are hand-formatted to at most ``MAX_WIDTH`` characters per line and fenced with
``# fmt: off`` / ``# fmt: on`` so that the formatter keeps them that way.  This test finds every such call in the
chapters, resolves it against the library and checks the width and the fence.
"""

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
MAX_WIDTH = 75  # the printed output adds no indentation; the book's column holds about 77 characters

# The names the chapters bind to library modules (``from accelerated_diffusion.experiments import derivations as D``).
ALIASES = {
    "ad": "accelerated_diffusion",
    "D": "accelerated_diffusion.experiments.derivations",
    "derivations": "accelerated_diffusion.experiments.derivations",
    "updates": "accelerated_diffusion.updates",
    "schedules": "accelerated_diffusion.schedules",
    "samplers": "accelerated_diffusion.samplers",
    "k_samplers": "accelerated_diffusion.k_samplers",
}
GETSOURCE = re.compile(r"getsource\(\s*([A-Za-z_][\w.]*)\s*\)")


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"]
            out.append(src if isinstance(src, str) else "".join(src))
    return out


def _imported_modules(cells: list[str]) -> dict[str, str]:
    """``{name: module}`` for the modules a notebook imports (IPython magics skipped)."""
    found = {}
    for src in cells:
        lines = [line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    found[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def _printed_sources() -> list[tuple[str, str]]:
    return [(path.name, expr) for path in CHAPTERS for src in _code_cells(path) for expr in GETSOURCE.findall(src)]


PRINTED = _printed_sources()


def _resolve(chapter: str, expr: str):
    alias, *attrs = expr.split(".")
    if alias not in ALIASES:
        pytest.fail(
            f"{chapter}: getsource({expr}) uses the name {alias!r}, which this test does not know; "
            f"add it to ALIASES in {Path(__file__).name} (known: {sorted(ALIASES)})"
        )
    imported = _imported_modules(_code_cells(ROOT / "chapters" / chapter)).get(alias)
    if imported is not None and imported != ALIASES[alias]:
        pytest.fail(f"{chapter} binds {alias!r} to {imported}, but ALIASES maps it to {ALIASES[alias]}")
    if not attrs:
        pytest.fail(f"{chapter}: getsource({expr}) prints a whole module; print a function instead")
    obj = importlib.import_module(ALIASES[alias])
    for name in attrs:
        obj = getattr(obj, name)
    return obj


def test_the_chapters_print_library_sources():
    """Guard against a silently empty parametrisation (the chapters moved or the call changed its spelling)."""
    assert len(PRINTED) >= 10, PRINTED


@pytest.mark.parametrize(("chapter", "expr"), PRINTED, ids=[f"{c}:{e}" for c, e in PRINTED])
def test_printed_source_fits_the_column(chapter, expr):
    obj = _resolve(chapter, expr)
    lines = inspect.getsource(obj).splitlines()
    wide = [f"{len(line)}: {line}" for line in lines if len(line) > MAX_WIDTH]
    assert not wide, f"{chapter} prints {expr}, whose lines exceed {MAX_WIDTH} characters:\n" + "\n".join(wide)
    assert not any("fmt:" in line for line in lines), f"{expr}: the formatter fence leaks into the printed source"


@pytest.mark.parametrize(("chapter", "expr"), PRINTED, ids=[f"{c}:{e}" for c, e in PRINTED])
def test_printed_source_is_fenced_from_the_formatter(chapter, expr):
    """``# fmt: off`` right above the function (and its decorators), ``# fmt: on`` right after it."""
    obj = inspect.unwrap(_resolve(chapter, expr))
    file_lines = Path(inspect.getsourcefile(obj)).read_text(encoding="utf-8").splitlines()
    body, start = inspect.getsourcelines(obj)  # start is 1-based: file_lines[start - 2] is the line above
    above = file_lines[start - 2].strip() if start >= 2 else ""
    below = file_lines[start - 1 + len(body)].strip() if start - 1 + len(body) < len(file_lines) else ""
    assert above == "# fmt: off", f"{expr}: the line above its definition is {above!r}, not '# fmt: off'"
    assert below == "# fmt: on", f"{expr}: the line after its definition is {below!r}, not '# fmt: on'"
