"""The one table class and the one interval format of the reporting code (experiments/tables.py), and the
silenced notebook warning of tqdm.auto."""

import subprocess
import sys
import textwrap

import pytest

from accelerated_diffusion.experiments import comparison as cmp
from accelerated_diffusion.experiments import comparison_report as rep
from accelerated_diffusion.experiments import perturbations, score_error, score_error_report
from accelerated_diffusion.experiments import rates_report as rr
from accelerated_diffusion.experiments import tables as T


def test_num_significant_digits_decimals_minus_and_missing():
    assert T.num(957.2) == "957" and T.num(1033.4) == "1033" and T.num(77.23) == "77.2" and T.num(7.0) == "7"
    assert T.num(0.008317) == "0.00832" and T.num(1.2e-5) == "0.000012"  # never in exponent form
    assert T.num(0.4567, digits=2) == "0.46" and T.num(99.6, digits=2) == "100" and T.num(-0.0) == "0"
    assert T.num(-1.013, decimals=2) == "-1.01" and T.num(-0.001, decimals=2) == "-0.00"  # as f"{v:.2f}"
    assert T.num(-224.3, minus=T.MINUS) == "\u2212224"
    assert T.num(None) == T.DASH == "\u2013" and T.num(float("nan"), missing="-") == "-"
    with pytest.raises(ValueError, match="digits"):
        T.num(1.0, digits=0)
    with pytest.raises(ValueError, match="decimals"):
        T.num(1.0, decimals=-1)


def test_interval_takes_an_estimate_or_value_and_interval():
    c = {"value": -40.43, "ci": [-74.0, -7.521]}
    assert T.interval(c) == T.interval(-40.43, (-74.0, -7.521)) == "-40.4 [-74, -7.52]"
    assert T.interval({"value": 1188.2, "ci": [1097.0, 1287.4]}) == "1188 [1097, 1287]"
    assert T.interval(c, minus=T.MINUS) == "\u221240.4 [\u221274, \u22127.52]"
    assert T.interval(-1.013, [-1.052, -0.968], decimals=2) == "-1.01 [-1.05, -0.97]"
    assert T.interval(0.4567, [0.31, 0.6], digits=2) == "0.46 [0.31, 0.6]"
    assert T.interval(None) == T.interval({}) == T.interval({"value": None, "ci": [1, 2]}) == "\u2013"
    assert T.interval(None, missing="-") == "-" and T.interval(2.5, None) == "2.5"  # no interval: the value
    assert T.interval(c, minus=T.MINUS, html=True) == (
        '\u221240.4<br><span class="ad-ci">[\u221274,&nbsp;\u22127.52]</span>'
    )
    with pytest.raises(TypeError, match="estimate"):
        T.interval(c, [1, 2])


def test_every_caller_uses_the_one_formatter():
    c = {"value": 1188.2, "ci": [1097.0, 1287.4]}
    # the old names, kept importable, are the shared objects
    assert rep.Table is rr.Table is T.Table and rep.html_table is T.html_table
    assert rep.interval is T.interval and rep.num is T.num and rep.MINUS == T.MINUS
    assert cmp.ci_text(c) == T.interval(c)  # was "1.19e+03 [1.1e+03, 1.29e+03]"
    assert rr.interval(-1.013, [-1.052, -0.968]) == T.interval(-1.013, [-1.052, -0.968], decimals=2)
    # the per-module formatters are gone
    for module, name in [
        (rep, "_ci_html"),
        (cmp, "_fmt"),
        (score_error, "_ci"),
        (perturbations, "_num"),
    ]:
        assert not hasattr(module, name), f"{module.__name__}.{name}"
    assert score_error_report.interval is T.interval


def test_table_from_columns_and_rows():
    t = T.Table(
        ["claim", "target", "slope"],
        [["a", "x", "-1.00"], ["a", "y", "-2.50"], ["b", "x", "0.10"]],
        caption="Table 1. <demo>",
        group=1,
    )
    h = t._repr_html_()
    assert h == t.html and h.startswith('<div class="results-table" style="overflow-x: auto')
    assert "<caption>Table 1. &lt;demo&gt;</caption>" in h and h.count('rowspan="2"') == 1
    assert "\u22122.50" in h and "-2.50" not in h and "text-align: right" in h
    assert h.count("<th ") == 3 and h.count("<tr>") == 4  # header + 3 rows
    assert h.count(">a</td>") == 1  # "a" merged over its two rows
    text = [
        "Table 1. <demo>",
        "claim  target  slope",
        "a      x       -1.00",
        "a      y       -2.50",
        "b      x        0.10",
    ]
    assert str(t) == repr(t) == "\n".join(text)
    assert t.plain() == "claim | target | slope\na | x | -1.00\na | y | -2.50\nb | x | 0.10"
    assert t.column("target") == ["x", "y", "x"] and len(t) == 3 and t
    assert not T.Table(["a"], [])  # an empty table is false, as a list of rows
    assert T.Table(["a", "b"], [["1", "x"]], align=["left", "left"])._repr_html_().count("text-align: left") == 4
    with pytest.raises(ValueError, match="2 cells"):
        T.Table(["a", "b", "c"], [["1", "2"]])
    with pytest.raises(ValueError, match="group"):
        T.Table(["a"], [["1"]], group=2)
    with pytest.raises(ValueError, match="align"):
        T.Table(["a"], [["1"]], align=["middle"])


def test_table_from_html_and_html_table():
    t = T.Table.from_html('<div class="ad-table"><table></table></div>', "Table 3. Test. More.")
    assert str(t) == t._repr_html_() == t.html == '<div class="ad-table"><table></table></div>'
    assert repr(t) == "<Table 3 (HTML)>" and repr(T.Table.from_html("<p>x</p>")) == "<table (HTML)>" and t
    for f in (t.plain, lambda: t.column("a"), lambda: len(t)):
        with pytest.raises(TypeError, match="from HTML"):
            f()
    h = T.html_table(
        ["grid", "value"],
        [["a", {"html": T.interval({"value": 1.5, "ci": [1, 2]}, html=True), "bold": True}], ["a", "3 < 4"]],
        caption="Table 2. Rich.",
        notes="n",
    )
    assert isinstance(h, T.Table) and repr(h) == "<Table 2 (HTML)>" and 'rowspan="2"' in str(h)
    assert '<strong>1.5<br><span class="ad-ci">[1,&nbsp;2]</span></strong>' in str(h) and "3 &lt; 4" in str(h)
    assert str(h).endswith('<p class="ad-table-notes">n</p></div>')


_KERNEL = """
    import sys, types, warnings
    warnings.simplefilter("always")  # every warning shown: only a filter can hide it
    sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # tqdm.auto: "in a Jupyter kernel"
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: object()
    sys.modules["IPython"] = ipython
    sys.modules["ipywidgets"] = None  # without ipywidgets: tqdm.auto warns "IProgress not found"
    if {library}:
        import accelerated_diffusion.experiments.train  # the package, diffusers and the experiments' tqdm.auto
    from tqdm.auto import tqdm
    bar = tqdm(total=2)
    bar.update(2)
    bar.close()
    print(type(bar).__module__)
"""


@pytest.mark.parametrize("library", [False, pytest.param(True, marks=pytest.mark.slow)])  # slow: imports torch
def test_the_library_silences_the_iprogress_warning_of_tqdm_auto(library):
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KERNEL.format(library=library))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("tqdm.std", "tqdm.asyncio")  # the text bar, not the notebook widget
    # without the library the simulated kernel does trigger the warning; with it, it is silenced
    assert ("IProgress not found" in run.stderr) is (not library), run.stderr
