r"""The results tables and the number format of every chapter: one table class, one interval formatter.

* numbers: :func:`num` (one number) and :func:`interval` (an estimate with its interval, ``957 [854, 1030]``):
  significant digits (values of 100 or more as integers, never in exponent form) or a fixed number of decimals,
  the ASCII ``-`` or the typographic minus :data:`MINUS`, a dash for a missing value;
* :class:`Table`: a table shown by Jupyter as HTML (``_repr_html_``).  Built from column titles and rows of
  text cells (``Table(columns, rows, caption=..., group=...)``: its own HTML, the first ``group`` columns merged
  over equal cells, numbers right-aligned, a typographic minus, and a text form through ``str()`` and
  :meth:`Table.plain`), or around ready-made HTML (:meth:`Table.from_html`, what :func:`html_table` returns:
  rich cells with bold, marks, shading, merged row headers, a header row of column groups and notes).

Used by :mod:`.comparison_report`, :mod:`.score_error_report`, :mod:`.rates_report` (which re-export
:class:`Table`, :func:`num`, :func:`interval` and :func:`html_table` under their old names) and by the text
helpers of :mod:`.comparison`, :mod:`.score_error` and :mod:`.perturbations`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping

__all__ = ["DASH", "MINUS", "Table", "html_table", "interval", "num"]

#: The typographic minus sign (U+2212) of the HTML tables and the prose; printed text keeps ``-``.
MINUS = "\u2212"
#: What a table shows for a missing value: an en dash (U+2013).
DASH = "\u2013"


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------
def num(v, *, digits: int = 3, decimals: int | None = None, minus: str = "-", missing: str = DASH) -> str:
    """One number ``v`` as text.

    * default (significant digits): values of 100 or more in magnitude as integers (``1033``), others to
      ``digits`` significant digits without trailing zeros (``77.2``, ``0.00832``, ``7``), never in exponent
      form; ``-0`` is written ``0``;
    * ``decimals``: exactly that many decimals (``f"{v:.2f}"``: ``-1.00``);
    * ``minus``: the text of a negative sign (:data:`MINUS` in HTML and prose);
    * ``missing``: the text for ``None`` or a value that is not finite (default an en dash)."""
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    if decimals is not None and decimals < 0:
        raise ValueError(f"decimals must be non-negative, got {decimals}")
    if v is None or not math.isfinite(float(v)):
        return missing
    v = float(v)
    if decimals is not None:
        text = f"{v:.{decimals}f}"
    elif abs(v) >= 100:
        text = f"{v:.0f}"
    elif v == 0:
        text = "0"
    else:
        places = max(0, digits - 1 - math.floor(math.log10(abs(v))))
        text = f"{round(v, places):.{places}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    if decimals is None and text in ("-0", "-0.0"):
        text = "0"
    return text.replace("-", minus)


def interval(
    value,
    ci=None,
    *,
    digits: int = 3,
    decimals: int | None = None,
    minus: str = "-",
    missing: str = DASH,
    html: bool = False,
) -> str:
    """An estimate with its interval as ``value [lo, hi]``, each number written by :func:`num` (``digits``,
    ``decimals``, ``minus``, ``missing`` as there): the book's one format for a number with its interval.

    Called as ``interval(c)`` with an estimate ``c = {"value", "ci": [lo, hi]}`` (the results files' form) or as
    ``interval(value, (lo, hi))``.  ``missing`` alone when ``c`` is ``None`` or empty or the value is ``None``;
    the value alone when there is no interval (``ci`` ``None``).  ``html``: for a narrow table cell, the value,
    then ``[lo,&nbsp;hi]`` on a second line (``<br><span class="ad-ci">``)."""
    if isinstance(value, Mapping):
        if ci is not None:
            raise TypeError("interval(c) takes an estimate {'value', 'ci'}; interval(value, ci) a number")
        value, ci = value.get("value"), value.get("ci")
    if value is None:
        return missing

    def fmt(x):
        return num(x, digits=digits, decimals=decimals, minus=minus, missing=missing)

    if ci is None:
        return fmt(value)
    lo, hi = ci
    if html:
        return f'{fmt(value)}<br><span class="ad-ci">[{fmt(lo)},&nbsp;{fmt(hi)}]</span>'
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------
_MINUS = re.compile(r"(?<![\w.])-(?=\d|\.\d)")


class Table:
    """A results table, shown in a notebook as HTML (``_repr_html_``).

    ``Table(columns, rows, caption=..., group=0, align=None)``: ``columns`` (header strings) and ``rows`` (lists
    of cell strings, one per column).  Its HTML is a table in its own horizontally scrolling box with the
    ``caption`` above it; the first ``group`` columns are merged over consecutive equal cells (one cell per
    sampler, say, over its targets); negative numbers get a typographic minus; a column is right-aligned when
    every non-empty cell starts like a number (or as ``align`` says: ``"left"``/``"right"`` per column).
    ``str(table)`` (and ``repr``, the ``text/plain`` form) is the same table as aligned text, :meth:`plain` the
    unpadded form the checked cells print, :meth:`column` the cells of one column.

    ``Table.from_html(html_text, caption)``: a table around ready-made HTML (:func:`html_table` builds it).
    ``str()`` is that HTML and ``repr()`` one line naming the caption's ``Table N`` (``<Table 3 (HTML)>``), the
    plain-text form kept in the notebook; it has no text cells (:meth:`plain`, :meth:`column` and ``len``
    raise)."""

    def __init__(self, columns, rows, *, caption: str = "", group: int = 0, align=None):
        self.columns = [str(c) for c in columns]
        self.rows = [[str(c) for c in r] for r in rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"row {r} has {len(r)} cells, the table has {len(self.columns)} columns")
        if not 0 <= group <= len(self.columns):
            raise ValueError(f"group must be between 0 and {len(self.columns)}, got {group}")
        self.caption = caption
        self.group = group
        # text left, numbers right: a column is numeric when every non-empty cell starts like a number
        self.align = list(align) if align is not None else [self._numeric(j) for j in range(len(self.columns))]
        if len(self.align) != len(self.columns) or not set(self.align) <= {"left", "right"}:
            raise ValueError(f"align needs 'left' or 'right' for each of the {len(self.columns)} columns")
        self._html = None

    @classmethod
    def from_html(cls, html_text: str, caption: str = "") -> Table:
        """A table around ready-made HTML ``html_text`` (shown as is) with its ``caption`` (plain text, for
        ``repr``)."""
        table = cls([], [], caption=caption)
        table._html = str(html_text)
        return table

    def _numeric(self, j: int) -> str:
        cells = [r[j] for r in self.rows if r[j] not in ("", DASH, "n/a")]
        ok = cells and all(re.match(r"^[-+]?(\d|\.\d|\[)", c) for c in cells)
        return "right" if ok else "left"

    def _text_cells(self, what: str) -> None:
        if self._html is not None:
            raise TypeError(f"{what}: this table was built from HTML (Table.from_html) and has no text cells")

    def column(self, name: str) -> list[str]:
        """The cells of the column ``name``."""
        self._text_cells("column")
        return [r[self.columns.index(name)] for r in self.rows]

    def __len__(self) -> int:
        self._text_cells("len")
        return len(self.rows)

    def __bool__(self) -> bool:
        return self._html is not None or bool(self.rows)

    def __str__(self) -> str:
        if self._html is not None:
            return self._html
        w = [max([len(c)] + [len(r[j]) for r in self.rows]) for j, c in enumerate(self.columns)]

        def line(cells):
            return "  ".join(c.rjust(w[j]) if self.align[j] == "right" else c.ljust(w[j]) for j, c in enumerate(cells))

        out = ([self.caption] if self.caption else []) + [line(self.columns).rstrip()]
        out += [line(r).rstrip() for r in self.rows]
        return "\n".join(out)

    def __repr__(self) -> str:
        if self._html is not None:
            first = self.caption.split(". ")[0] if self.caption.startswith("Table ") else "table"
            return f"<{first} (HTML)>"
        return str(self)

    def plain(self) -> str:
        """The header and the rows, one line each, cells separated by ``" | "`` and not padded: the form the
        chapters' checked cells print (nbval compares the text between numbers exactly, so a number that prints one
        digit wider must not move the others)."""
        self._text_cells("plain")
        return "\n".join(" | ".join(r) for r in [self.columns] + self.rows)

    @property
    def html(self) -> str:
        """The table's HTML (what Jupyter shows)."""
        return self._repr_html_()

    def _repr_html_(self) -> str:
        if self._html is not None:
            return self._html

        def cell(tag, text, j, extra=""):
            text = _MINUS.sub(MINUS, html.escape(text)).replace("\n", "<br>")
            style = f"text-align: {self.align[j]}; white-space: nowrap; padding: 0.15em 0.6em"
            return f'<{tag}{extra} style="{style}">{text}</{tag}>'

        head = "".join(cell("th", c, j) for j, c in enumerate(self.columns))
        # rowspans of the grouped columns
        spans = [[1] * len(self.rows) for _ in range(self.group)]
        for j in range(self.group):
            i = 0
            while i < len(self.rows):
                k = i + 1
                while k < len(self.rows) and self.rows[k][: j + 1] == self.rows[i][: j + 1]:
                    spans[j][k] = 0
                    k += 1
                spans[j][i] = k - i
                i = k
        body = []
        for i, r in enumerate(self.rows):
            tds = []
            for j, c in enumerate(r):
                if j < self.group:
                    if spans[j][i] == 0:
                        continue
                    extra = f' rowspan="{spans[j][i]}"' if spans[j][i] > 1 else ""
                    tds.append(
                        cell("td", c, j, extra + ' class="group"').replace('style="', 'style="vertical-align: top; ', 1)
                    )
                else:
                    tds.append(cell("td", c, j))
            body.append("<tr>" + "".join(tds) + "</tr>")
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (
            '<div class="results-table" style="overflow-x: auto; max-width: 100%">'
            f'<table class="table results-table" style="width: auto; font-variant-numeric: tabular-nums">{cap}'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )


# ----------------------------------------------------------------------------------------------------------------
# Tables with rich cells
# ----------------------------------------------------------------------------------------------------------------
def _cell(c, tag: str) -> str:
    """One cell: a string (escaped), or a dict ``{"text" | "html", "bold", "mark", "shade", "title", "span"}``."""
    if not isinstance(c, dict):
        c = {"text": c}
    body = c["html"] if "html" in c else html.escape(str(c.get("text", "")))
    if c.get("bold"):
        body = f"<strong>{body}</strong>"
    if c.get("mark"):
        body += f'<sup class="ad-mark">{html.escape(c["mark"])}</sup>'
    attrs = ""
    if c.get("shade"):
        attrs += ' class="ad-shade"'
    if c.get("title"):
        attrs += f' title="{html.escape(c["title"])}"'
    if c.get("span", 1) > 1:
        attrs += f' rowspan="{c["span"]}"'
    if tag == "th" and "scope" not in attrs:
        attrs += ' scope="row"'
    return f"<{tag}{attrs}>{body}</{tag}>"


def html_table(columns, rows, *, caption: str = "", notes: str = "", row_labels: int = 1, groups=None) -> Table:
    """A :class:`Table` (:meth:`Table.from_html`) with rich cells: ``columns`` the column titles, ``rows`` lists
    of cells (a string, or a dict with ``text`` or ``html`` and optional ``bold``, ``mark``, ``shade``,
    ``title``), the first ``row_labels`` cells of each row as row headers; a row-header cell equal to the one
    above it (and to all row headers left of it) is merged into it (``rowspan``).  ``groups``:
    ``[(title, n_columns), ...]``, a header row above ``columns``.  ``caption`` (plain text; ``Table N.`` first)
    goes into ``<caption>``, ``notes`` (plain text) under the table."""
    columns = list(columns)
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"every row needs {len(columns)} cells, one per column title")
    # row spans: a row-header cell whose row agrees with the row above in every header column up to it
    spans = [[1] * len(r) for r in rows]
    keep = [[True] * len(r) for r in rows]
    for j in range(row_labels):
        top = 0
        for i in range(1, len(rows)):
            if all(rows[i][m] == rows[i - 1][m] for m in range(j + 1)):
                keep[i][j] = False
                spans[top][j] += 1
            else:
                top = i
    out = ['<table class="ad-results">']
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead>")
    if groups:
        if sum(n for _, n in groups) != len(columns):
            raise ValueError("the groups must span every column")
        out.append(
            "<tr>" + "".join(f'<th colspan="{n}" scope="colgroup">{html.escape(t)}</th>' for t, n in groups) + "</tr>"
        )
    out.append("<tr>" + "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in columns) + "</tr>")
    out.append("</thead><tbody>")
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            if not keep[i][j]:
                continue
            if spans[i][j] > 1:
                c = {**(c if isinstance(c, dict) else {"text": c}), "span": spans[i][j]}
            cells.append(_cell(c, "th" if j < row_labels else "td"))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if notes:
        out.append(f'<p class="ad-table-notes">{html.escape(notes)}</p>')
    return Table.from_html('<div class="ad-table">' + "".join(out) + "</div>", caption)
