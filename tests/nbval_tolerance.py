"""Numbers in the chapters' checked outputs compared to a stated tolerance, not to their last printed digit.

nbval compares a re-executed cell's outputs with the committed ones as strings. A number that comes out of a
network, a Monte Carlo estimate, a least-squares fit or a bootstrap can differ in its last printed digit from one
machine to another (CPU, BLAS kernel, thread count decide the order of floating-point sums), so an exact string
comparison fails on a rounding boundary: ``11.2`` committed, ``11.1`` re-executed. A cell tagged
``nbval-approx`` (besides ``nbval-check-output``) is therefore compared token by token:

* everything that is not a number must be identical (labels, verdict words, marks such as ``*``, layout);
* two numbers ``a`` (committed) and ``b`` (re-executed) agree when ``|a - b| <= ulp + RTOL * max(|a|, |b|)``,
  where ``ulp`` is the unit of the last printed digit of the coarser of the two (``11.2`` -> 0.1, ``1.03e+03`` ->
  10, ``301`` -> 1). A result printed to three digits may thus move by one unit of its last digit plus 0.1 %:
  enough for floating-point reordering, far too little for a changed sampler, model or seed.

Cells without the tag keep nbval's exact comparison: symbolic results, counts, ``True``/``False`` and other exact
outputs. The root ``conftest.py`` installs :func:`install` on every nbval cell.
"""

from __future__ import annotations

import math
import re

TAG = "nbval-approx"
RTOL = 1e-3

# a decimal number: optional sign, digits with an optional fraction (or a bare fraction), optional exponent
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def _ulp(token: str) -> float:
    """The unit of the last printed digit of ``token`` (``11.2`` -> 0.1, ``1.03e+03`` -> 10, ``88`` -> 1)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** ((int(exponent) if exponent else 0) - decimals)


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """``text`` cut into the text between numbers and the numbers themselves."""
    return NUMBER.split(text), NUMBER.findall(text)


def numbers_agree(a: str, b: str, rtol: float = RTOL) -> bool:
    """Whether two printed numbers agree to one unit of the coarser last digit plus ``rtol`` (module docstring)."""
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= max(_ulp(a), _ulp(b)) + rtol * max(abs(x), abs(y))


def first_difference(ref: str, test: str, rtol: float = RTOL) -> str | None:
    """``None`` when ``test`` agrees with ``ref`` (same text between numbers, numbers within tolerance), else a
    one-line description of the first disagreement."""
    ref_text, ref_nums = split_numbers(ref)
    test_text, test_nums = split_numbers(test)
    if ref_text != test_text:
        for i, (r, t) in enumerate(zip(ref_text, test_text)):
            if r != t:
                return f"text differs after {i} numbers: {r[:60]!r} committed, {t[:60]!r} re-executed"
        return f"{len(ref_nums)} numbers committed, {len(test_nums)} re-executed"
    for r, t in zip(ref_nums, test_nums):
        if not numbers_agree(r, t, rtol):
            return f"{r} committed, {t} re-executed: beyond one unit of the last digit + {rtol:g} relative"
    return None


def outputs_agree(ref, test, rtol: float = RTOL) -> str | None:
    """Compare two lists of strings (or nested JSON values) output by output; ``None`` when all agree."""
    if isinstance(ref, list) and isinstance(test, list):
        if len(ref) != len(test):
            return f"{len(ref)} outputs committed, {len(test)} re-executed"
        for r, t in zip(ref, test):
            why = outputs_agree(r, t, rtol)
            if why:
                return why
        return None
    if isinstance(ref, dict) and isinstance(test, dict):
        if ref.keys() != test.keys():
            return f"keys {sorted(ref)} committed, {sorted(test)} re-executed"
        for k in ref:
            why = outputs_agree(ref[k], test[k], rtol)
            if why:
                return why
        return None
    if isinstance(ref, str) and isinstance(test, str):
        return first_difference(ref, test, rtol)
    return None if ref == test else f"{ref!r} committed, {test!r} re-executed"


def install(item) -> None:
    """Make the nbval cell ``item`` compare its numbers with tolerance when its cell is tagged :data:`TAG`.

    The exact comparison runs first (most cells agree to the letter); only when it fails are the numbers replaced
    by a placeholder, the structure compared exactly by nbval's own code, and the numbers compared pairwise by
    :func:`numbers_agree` in the order nbval flattens the outputs."""
    if TAG not in item.cell.get("metadata", {}).get("tags", []):
        return
    exact = item.compare_outputs

    def compare_outputs(test, ref, skip_compare=None):
        if exact(test, ref, skip_compare):
            return True
        failure = list(item.comparison_traceback)
        refs, tests = [], []
        sanitize = item.sanitize

        def collect(into):
            def placeholder(s):
                s = sanitize(s)
                if isinstance(s, str):
                    into.append(s)
                    return NUMBER.sub("<number>", s)
                return s

            return placeholder

        try:
            # nbval flattens the reference first, then the test outputs, each through sanitize()
            item.sanitize = _two_phase(collect(refs), collect(tests), len(_texts(ref, item, skip_compare)))
            structure = exact(test, ref, skip_compare)
        finally:
            item.sanitize = sanitize
        if not structure:
            return False
        why = outputs_agree(refs, tests)
        if why:
            item.comparison_traceback = failure + [f"nbval-approx: {why}"]
            return False
        item.comparison_traceback = []
        return True

    item.compare_outputs = compare_outputs


def _texts(outputs, item, skip_compare) -> list:
    """The values nbval passes through ``sanitize`` for ``outputs`` (its flattening, counted to split the calls)."""
    from nbval.plugin import transform_streams_for_comparison

    skip = skip_compare or item.parent.skip_compare
    values = []
    for out in transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                values.extend(v for k, v in value.items() if k not in skip)
            else:
                values.append(value)
    return values


def _two_phase(first, second, n_first: int):
    """A sanitize function that sends its first ``n_first`` calls to ``first`` and the rest to ``second``."""
    calls = [0]

    def sanitize(s):
        calls[0] += 1
        return first(s) if calls[0] <= n_first else second(s)

    return sanitize
