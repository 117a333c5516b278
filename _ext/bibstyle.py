"""Author-year bibliography labels that tell same-author, same-year papers apart (2022a, 2022b).

sphinxcontrib-bibtex's ``author_year`` reference style prints "Lu et al., 2022" for two different papers,
and its default bibliography style lists entries under alpha labels ([LZB+22]). This extension registers

* a pybtex label style ``author_year_suffix``: labels "Lu et al., 2022a", computed once over the *whole*
  bibliography file, so a paper has the same label in every chapter's (filtered) bibliography;
* a pybtex formatting style ``author_year`` (pybtex's ``unsrt`` templates, which print url, eprint and doi;
  entries sorted by author, year, title; the labels above);
* a referencing style ``author_year_suffix``: sphinxcontrib-bibtex's ``author_year`` with the year taken
  from the label, so ``{cite:p}`` gives "[Lu et al., 2022a]" and ``{cite:t}`` "Lu et al. [2022a]", the same
  text as the label in the bibliography list.

Enabled in ``_config.yml`` (``sphinx: local_extensions: {bibstyle: _ext}``) with
``bibtex_default_style: author_year`` and ``bibtex_reference_style: author_year_suffix``.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections import defaultdict
from pathlib import Path

import pybtex.plugin
import sphinxcontrib.bibtex.plugin
from pybtex.database import parse_file
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle as AuthorYearTitleSorting
from pybtex.style.template import first_of, optional, field
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
    BasicAuthorYearParentheticalReferenceStyle,
    BasicAuthorYearTextualReferenceStyle,
)
from sphinxcontrib.bibtex.style.referencing.extra_year import ExtraYearReferenceStyle
from sphinxcontrib.bibtex.style.template import join, join2, node, post_text, pre_text, reference

#: citation key -> label ("Lu et al., 2022a"), over every entry of every configured .bib file
LABELS: dict[str, str] = {}


def _latex_to_text(s: str) -> str:
    return Text.from_latex(s).render_as("text")


def _last(person) -> str:
    return _latex_to_text(" ".join(person.prelast_names + person.last_names))


def author_part(entry) -> str:
    """The author part of a label, as the author_year reference style prints it (without italics)."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    if not persons:
        return _latex_to_text(entry.fields.get("title", entry.key))
    if len(persons) == 1:
        return _last(persons[0])
    if len(persons) == 2:
        return f"{_last(persons[0])} and {_last(persons[1])}"
    return f"{_last(persons[0])} et al."


def _sort_key(entry):
    author_key, year, _ = AuthorYearTitleSorting().sorting_key(entry)
    title = re.sub(r"[^a-z0-9 ]", "", _latex_to_text(entry.fields.get("title", "")).lower())
    return (author_key, year, title, entry.key)


def compute_labels(entries) -> dict[str, str]:
    """Author-year labels; papers that share author part and year get a, b, c... in author-year-title order."""
    groups = defaultdict(list)
    for entry in entries:
        groups[(author_part(entry), entry.fields.get("year", "n.d."))].append(entry)
    labels = {}
    for (authors, year), group in groups.items():
        group.sort(key=_sort_key)
        for i, entry in enumerate(group):
            suffix = string.ascii_lowercase[i] if len(group) > 1 else ""
            labels[entry.key] = f"{authors}, {year}{suffix}"
    return labels


class AuthorYearSuffixLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            yield LABELS.get(entry.key) or compute_labels([entry])[entry.key]


class AuthorYearSortingStyle(AuthorYearTitleSorting):
    def sorting_key(self, entry):
        return _sort_key(entry)


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "author_year_suffix"
    default_sorting_style = "author_year_suffix"


@node
def year_label(children, data):
    """The year of a citation as its bibliography label has it (2022a), else the year field."""
    assert not children
    label = getattr(data.get("formatted_entry"), "label", "") or ""
    if ", " in label:
        return Text(label.rsplit(", ", 1)[1])
    return first_of[optional[field("year")], "n.d."].format_data(data)


@dataclasses.dataclass
class _Parenthetical(BasicAuthorYearParentheticalReferenceStyle):
    def inner(self, role_name):
        return join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
            pre_text,
            reference[
                join(sep=self.author_year_sep)[
                    self.person.author_or_editor_or_title(full="s" in role_name), year_label
                ]
            ],
            post_text,
        ]


@dataclasses.dataclass
class _Textual(BasicAuthorYearTextualReferenceStyle):
    def inner(self, role_name):
        return join(sep=self.text_reference_sep)[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[
                self.bracket.left,
                join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
                    pre_text, reference[year_label], post_text
                ],
                self.bracket.right,
            ],
        ]


@dataclasses.dataclass
class _Year(ExtraYearReferenceStyle):
    def inner(self, role_name):
        return reference[year_label]


@dataclasses.dataclass
class AuthorYearSuffixReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's author_year, with the year (and its a/b suffix) read from the label."""

    def __post_init__(self):
        super().__post_init__()
        swap = {
            BasicAuthorYearParentheticalReferenceStyle: _Parenthetical,
            BasicAuthorYearTextualReferenceStyle: _Textual,
            ExtraYearReferenceStyle: _Year,
        }
        styles = []
        for style in self.styles:
            new = swap.get(type(style))
            styles.append(new(**{f.name: getattr(style, f.name) for f in dataclasses.fields(style) if f.init})
                          if new else style)
        self.styles = styles
        self.role_style.clear()
        self.role_style.update((r, s) for s in self.styles for r in s.role_names())


def _load_labels(app, config):
    entries = []
    for bibfile in config.bibtex_bibfiles or []:
        entries.extend(parse_file(str(Path(app.confdir) / bibfile)).entries.values())
    LABELS.clear()
    LABELS.update(compute_labels(entries))


pybtex.plugin.register_plugin("pybtex.style.labels", "author_year_suffix", AuthorYearSuffixLabelStyle, force=True)
pybtex.plugin.register_plugin("pybtex.style.sorting", "author_year_suffix", AuthorYearSortingStyle, force=True)
pybtex.plugin.register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle, force=True)
sphinxcontrib.bibtex.plugin.register_plugin(
    "sphinxcontrib.bibtex.style.referencing", "author_year_suffix", AuthorYearSuffixReferenceStyle, force=True
)


def setup(app):
    app.connect("config-inited", _load_labels)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
