"""Book-wide settings that Jupyter Book's ``_config.yml`` cannot express on its own (local Sphinx extension).

* **One repository address.** ``repository.url`` in ``_config.yml`` is the only place the book's repository is
  written. Where it is set, this extension turns on the repository button (Jupyter Book refuses the button without an
  address), adds the tag ``repository`` (pages show ``{only} repository`` blocks, and ``{only} not repository``
  blocks otherwise), replaces ``@REPOSITORY_URL@`` in the page sources, and appends the address to the citation in
  the footer (``@REPOSITORY_CITATION@`` in ``html.extra_footer``). Binder and Colab buttons need the address too:
  where it is unset, this extension drops the ``launch_buttons`` settings (sphinx-book-theme would fail on them),
  so the book shows no dead button.
* **No duplicated inline scripts.** Sphinx 7.4 registers an inline script added after the builder starts (such as
  sphinx-thebe's ``const THEBE_JS_URL = ...``) twice, once with file name ``None`` and once with ``''``, so every
  page declared the constant twice and the browser reported "Identifier 'THEBE_JS_URL' has already been declared".
  Each page keeps the first copy of each script.
"""

from __future__ import annotations

from html import escape

PLACEHOLDER = "@REPOSITORY_URL@"
FOOTER_PLACEHOLDER = "@REPOSITORY_CITATION@"


def repository_url(config) -> str:
    """The address from ``_config.yml`` (``repository.url``), or '' where unset."""
    url = (config.html_theme_options or {}).get("repository_url") or ""
    return url.strip().rstrip("/")


def _config_inited(app, config):
    url = repository_url(config)
    opts = config.html_theme_options
    opts["repository_url"] = url
    opts["use_repository_button"] = bool(url)
    if url:
        app.tags.add("repository")
    else:  # no address: no launch buttons (sphinx-book-theme fails on launch settings without one)
        opts["launch_buttons"] = {}
    footer = opts.get("extra_footer") or ""
    cite = f' <a href="{escape(url, quote=True)}">{escape(url)}</a>' if url else ""
    opts["extra_footer"] = footer.replace(FOOTER_PLACEHOLDER, cite)


def _source_read(app, docname, source):
    if PLACEHOLDER in source[0]:
        source[0] = source[0].replace(PLACEHOLDER, repository_url(app.config) or "REPOSITORY-URL")


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    files = context.get("script_files")
    if not files:
        return
    seen, keep = set(), []
    for js in files:
        key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            keep.append(js)
    files[:] = keep


def setup(app):
    app.connect("config-inited", _config_inited, priority=900)
    app.connect("source-read", _source_read)
    app.connect("html-page-context", _dedupe_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
