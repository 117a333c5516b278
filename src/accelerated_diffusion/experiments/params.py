r"""Papermill parameter files checked against the notebook they are for, before anything runs.

Papermill injects the keys of a parameter file (``-f FILE.yaml``) after a notebook's cell tagged ``parameters``
and only *warns* about a key that the cell does not define: a misspelt key runs the defaults.  Here:

* :func:`notebook_parameters` reads the ``parameters`` cell and parses its assignments with :mod:`ast` (the name,
  the default when it is a literal, and whether the line's comment allows ``None``);
* :func:`check_parameters` refuses a key the cell does not define (:class:`ParameterError` naming the close
  matches and the valid keys) and a value whose type differs from a clear default's (an int for an int, a number
  for a float, a string for a string, a list for a list, element by element when the default's elements share
  one type; ``None`` only where the default is ``None`` or the line's comment mentions ``None``);
* :func:`read_param_file` reads a parameter file and the notebook its header names in a comment line
  ``# notebook: chapters/learned_scores.ipynb`` (a comment, not a key: papermill would inject a key), relative
  to the repository root;
* ``accelerated-diffusion run-chapter NOTEBOOK -f FILE.yaml [-o OUT]`` (:func:`main`) checks, then runs
  papermill with the notebook's folder as working directory.

Raw ``papermill`` does not call these checks: use ``run-chapter`` (or :func:`check_param_file` first).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ParameterError",
    "Parameter",
    "notebook_parameters",
    "check_parameters",
    "read_param_file",
    "check_param_file",
    "main",
]

_NOTEBOOK_LINE = re.compile(r"^#\s*notebook:\s*(\S+)\s*$")
_NO_DEFAULT = object()


class ParameterError(ValueError):
    """A parameter file that does not fit its notebook's ``parameters`` cell (unknown key, wrong type)."""


@dataclass(frozen=True)
class Parameter:
    """One assignment of a ``parameters`` cell: ``name = default  # comment``."""

    name: str
    default: object  # the literal value, or _NO_DEFAULT when the expression is not a literal
    none_ok: bool  # the default is None, or the line's comment mentions None


def _parameters_cell(nb: dict, notebook) -> str:
    cells = [c for c in nb.get("cells", []) if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if len(cells) != 1:
        raise ParameterError(f"{notebook} has {len(cells)} cells tagged 'parameters', expected exactly one")
    src = cells[0].get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_parameters(notebook) -> dict[str, Parameter]:
    """The parameters of ``notebook`` (a path to an ``.ipynb``): its cell tagged ``parameters``, parsed with
    :mod:`ast`; every top-level assignment to a plain name is a parameter, in the cell's order."""
    path = Path(notebook)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"notebook {path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ParameterError(f"{path} is not a notebook (JSON): {e}") from None
    src = _parameters_cell(nb, path)
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise ParameterError(f"{path}: the parameters cell does not parse ({e})") from None
    lines = src.splitlines()
    out: dict[str, Parameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = _NO_DEFAULT
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1] if "#" in line else ""
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = Parameter(t.id, default, default is None or "None" in comment)
    if not out:
        raise ParameterError(f"{path}: the parameters cell assigns no names")
    return out


def _kind(v) -> str | None:
    """The type class a default fixes: 'bool', 'int', 'number', 'str', 'list', 'dict', or None (anything)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "dict"
    return None


_NAMES = {
    "bool": "a bool",
    "int": "an int",
    "number": "a number",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
}


def _fits(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    return True


def _type_error(p: Parameter, value) -> str | None:
    """Why ``value`` does not fit parameter ``p``, or None."""
    if p.default is _NO_DEFAULT or p.default is None:
        return None
    if value is None:
        return None if p.none_ok else f"{p.name}: None is not allowed (default {p.default!r})"
    kind = _kind(p.default)
    if kind is None:
        return None
    if not _fits(value, kind):
        return f"{p.name}: expected {_NAMES[kind]}, got {value!r} (default {p.default!r})"
    if kind == "list" and p.default:
        kinds = {_kind(v) for v in p.default}
        if len(kinds) == 1 and None not in kinds:
            (elem,) = kinds
            bad = [v for v in value if not _fits(v, elem)]
            if bad:
                return f"{p.name}: every entry must be {_NAMES[elem]}, got {bad[0]!r} (default {list(p.default)!r})"
    return None


def check_parameters(params: dict, notebook) -> dict:
    """``params`` (a parameter file's mapping) against the ``parameters`` cell of ``notebook``; returns
    ``params``.  Raises :class:`ParameterError` for a key the cell does not define (with close matches and the
    valid keys) or a value of the wrong type (see the module docstring)."""
    if not isinstance(params, dict):
        raise ParameterError(f"a parameter file must hold a mapping of names to values, got {type(params).__name__}")
    known = notebook_parameters(notebook)
    errors = []
    for key in params:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=3)
            errors.append(
                f"unknown parameter {key!r}" + (f" (did you mean {' or '.join(map(repr, near))}?)" if near else "")
            )
    if errors:
        raise ParameterError(f"{'; '.join(errors)}: {Path(notebook).name} takes {', '.join(known)}")
    errors = [e for e in (_type_error(known[k], v) for k, v in params.items()) if e]
    if errors:
        raise ParameterError(f"{Path(notebook).name}: " + "; ".join(errors))
    return params


def _repository_root() -> Path:
    from .paths import repository_root

    return repository_root()


def read_param_file(path) -> tuple[dict, Path | None]:
    """``(params, notebook)``: the mapping of the YAML parameter file ``path`` (empty file: ``{}``) and the
    notebook named by its ``# notebook: PATH`` comment line (relative to the repository root; None without
    one)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"parameter file {path} does not exist") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParameterError(f"{path} is not valid YAML: {e}") from None
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ParameterError(f"{path}: a parameter file must hold a mapping of names to values")
    names = [m.group(1) for m in map(_NOTEBOOK_LINE.match, text.splitlines()) if m]
    if len(names) > 1:
        raise ParameterError(f"{path} names {len(names)} notebooks ({names}); expected one '# notebook:' line")
    notebook = None
    if names:
        notebook = Path(names[0])
        if not notebook.is_absolute():
            notebook = _repository_root() / notebook
    return params, notebook


def check_param_file(path, notebook=None) -> dict:
    """The checked parameters of the file ``path`` for ``notebook`` (default the one its ``# notebook:`` line
    names; a clear error when neither is given, or when the two differ)."""
    params, named = read_param_file(path)
    if notebook is None and named is None:
        raise ParameterError(
            f"{path} names no notebook (add a '# notebook: chapters/NAME.ipynb' line) and none was given"
        )
    if notebook is not None and named is not None and Path(notebook).resolve() != named.resolve():
        raise ParameterError(f"{path} is for {named}, not {notebook}")
    try:
        return check_parameters(params, notebook if notebook is not None else named)
    except ParameterError as e:
        raise ParameterError(f"{path}: {e}") from None


def _is_papermill_output(path: Path) -> bool:
    try:
        return "papermill" in json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """``accelerated-diffusion run-chapter NOTEBOOK -f FILE.yaml [-o OUT]``: check the parameter file against the
    notebook (one-line error, exit status 2), then execute it with papermill in the notebook's folder."""
    p = argparse.ArgumentParser(
        prog="accelerated-diffusion run-chapter",
        description="Check a papermill parameter file against a notebook's parameters "
        "cell, then run the notebook with it.",
    )
    p.add_argument("notebook", type=Path, help="the chapter, e.g. chapters/learned_scores.ipynb")
    p.add_argument("-f", "--parameters-file", type=Path, required=True, help="YAML file of parameters")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="executed notebook (default NOTEBOOK-STEM.PARAMS-STEM.ipynb in the current folder); an "
        "existing file is replaced only when papermill wrote it",
    )
    p.add_argument("--check-only", action="store_true", help="check the parameters and stop")
    a = p.parse_args(argv)
    out = a.out if a.out is not None else Path(f"{a.notebook.stem}.{a.parameters_file.stem}.ipynb")
    try:
        params = check_param_file(a.parameters_file, a.notebook)
        if out.resolve() == a.notebook.resolve():
            raise ParameterError(f"-o {out} is the notebook itself")
        if out.exists() and not _is_papermill_output(out):
            raise ParameterError(f"-o {out} exists and is not a notebook papermill wrote; choose another path")
        if not out.resolve().parent.is_dir():
            raise FileNotFoundError(f"-o {out}: folder {out.resolve().parent} does not exist")
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{a.parameters_file}: {len(params)} parameters fit {a.notebook}")
    if a.check_only:
        return 0
    try:
        import papermill
    except ImportError:
        print(f"{p.prog}: error: papermill is not installed (pip install -e '.[book]')", file=sys.stderr)
        return 2
    try:
        papermill.execute_notebook(str(a.notebook), str(out), parameters=params, cwd=str(a.notebook.resolve().parent))
    except papermill.PapermillExecutionError as e:
        print(
            f"{p.prog}: error: {a.notebook} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
            f"(executed notebook: {out})",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
