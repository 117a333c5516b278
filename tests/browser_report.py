"""Open every page of the built book in headless Chromium and measure what a reader sees.

Used by ``tests/test_browser.py`` (``make test``) and runnable on its own, for a per-page table:

    .venv/bin/python tests/browser_report.py                 # build into a temporary folder, then measure
    .venv/bin/python tests/browser_report.py --html _build/html --findings findings.txt

Per page it counts, at a 1280 px window (and, where said, at a 390x844 phone screen too):

* display equations, code blocks, cell outputs and tables wider than the text column (or scrolling inside it);
* formulas MathJax did not typeset (raw TeX left in the text) and MathJax error nodes;
* images that did not load, have no alt text (or a file name as alt text), are not inside a numbered figure
  with a caption, or are shown below 60 % of their natural width;
* internal links whose file or anchor does not exist;
* at 390x844 (a phone): content cut off, i.e. an element reaching beyond the screen or beyond a box that clips
  it, without a box of its own that scrolls sideways (equations, code, outputs and tables may scroll in theirs);
* at both sizes: errors in the browser console, and the number of search boxes shown (one).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the PyPI package ``selenium``
(``apt-get install chromium chromium-driver``; selenium is in the ``test`` extra).
"""

from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1280, 1000)
PHONE = (390, 844)  # CSS pixels of a phone screen (iPhone 12-15)
SMALL_FIGURE = 0.6  # a figure shown below this fraction of its natural width is too small to read
CHROMIUM_CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
DRIVER_CANDIDATES = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
INSTALL_HINT = (
    "headless Chromium is needed: as root, `apt-get update && apt-get install -y chromium chromium-driver` "
    "(`make test` does this when run as root), and `pip install selenium` (in the package's `test` extra)"
)

# ---------------------------------------------------------------------------------------------------------
# Finding the tools, building the book


def find_chromium() -> tuple[str | None, str | None]:
    """(browser, driver) paths, or None for what is missing."""
    browser = next((p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    driver = next((p for p in DRIVER_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("chromedriver")
    return browser, driver


def missing_requirements() -> str | None:
    """A sentence saying what is missing to run the browser checks, or None."""
    browser, driver = find_chromium()
    missing = [n for n, p in (("chromium", browser), ("chromium-driver", driver)) if p is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (PyPI)")
    if missing:
        return f"missing {', '.join(missing)}; {INSTALL_HINT}"
    return None


def jupyter_book_command() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


def build_book(out_dir: Path, root: Path = ROOT) -> Path:
    """Render the book from the committed notebooks (no execution) into ``out_dir``; return the HTML folder.

    The checkout is left as it was: everything goes under ``out_dir``."""
    out_dir = Path(out_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH", "")]))
    cmd = jupyter_book_command() + ["build", str(root), "--path-output", str(out_dir), "--keep-going"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    html_dir = out_dir / "_build" / "html"
    if proc.returncode != 0 or not (html_dir / "index.html").exists():
        raise RuntimeError(
            f"jupyter-book build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return html_dir


def book_pages(html_dir: Path) -> list[Path]:
    """The pages of the book: every HTML file except Sphinx's own (search, index, sources)."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    pages = []
    for p in sorted(html_dir.rglob("*.html")):
        rel = p.relative_to(html_dir)
        if rel.parts[0].startswith("_") or p.name in skip:
            continue
        if rel.as_posix() == "index.html" and "http-equiv" in p.read_text(errors="replace")[:2000]:
            continue  # the redirect to the root chapter
        pages.append(p)
    return pages


# ---------------------------------------------------------------------------------------------------------
# The browser


def make_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a browser online
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read back per page
    profile = tempfile.mkdtemp(prefix="book-chromium-")
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
    ]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    drv.set_window_size(*WINDOW)
    drv.set_script_timeout(60)
    drv.set_page_load_timeout(60)
    drv._book_profile = profile
    return drv


def set_screen(drv, size: tuple[int, int] | None) -> None:
    """Emulate a screen of ``size`` CSS pixels (the page's viewport, whatever the window); None: the window."""
    if size is None:
        drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    else:
        drv.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
        )


def console_errors(drv) -> list[str]:
    """The console's errors since the last call (uncaught exceptions, failed scripts, console.error)."""
    return [e.get("message", "")[:300] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def close_driver(drv) -> None:
    profile = getattr(drv, "_book_profile", None)
    try:
        drv.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)


# The start of every script run in a page: wait (at most 15 s) for MathJax where Sphinx loads it, then for its
# first typesetting; ``mathjax`` says whether it loaded.
WAIT_FOR_MATHJAX_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const t0 = Date.now();
  const wantsMathJax = !!document.querySelector('script[src*="mathjax"]');  // Sphinx loads it only where there is maths
  while (wantsMathJax && !(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 15000)
    await new Promise(r => setTimeout(r, 50));
  const mathjax = !!(window.MathJax && MathJax.startup && MathJax.startup.promise);
  if (mathjax) { try { await MathJax.startup.promise; } catch (e) {} }
"""


# Runs in the page: waits for MathJax, opens every collapsed block, measures, returns plain data.
MEASURE_JS = (
    WAIT_FOR_MATHJAX_JS
    + r"""
  // the page as a reader first gets it (collapsed blocks closed): its height
  const pageHeight = document.documentElement.scrollHeight;
  // open collapsed content (hide-input, hide-output, dropdowns), so that it is measured too
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  if (mathjax && MathJax.typesetPromise) { try { await MathJax.typesetPromise(); } catch (e) {} }
  await new Promise(r => setTimeout(r, 100));
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const cs = getComputedStyle(article);
  const col = article.getBoundingClientRect();
  const colLeft = col.left + parseFloat(cs.paddingLeft), colRight = col.right - parseFloat(cs.paddingRight);
  const colWidth = colRight - colLeft;
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const where = el => el.closest('.cell_output') ? 'output' : (el.closest('.cell_input') ? 'input' : 'text');
  // where a construct is, for a reader: the title of its section and the first line of its code cell
  const context = el => {
    const sec = el.closest('section');
    const h = sec ? sec.querySelector('h1, h2, h3, h4') : null;
    const cell = el.closest('div.cell');
    const src = cell ? cell.querySelector('.cell_input pre') : null;
    return {section: h ? h.textContent.replace('#', '').trim().slice(0, 60) : '',
            cell: src ? src.textContent.split('\n').find(l => l.trim()) || '' : ''};
  };
  const texOf = el => {
    try {
      const items = MathJax.startup.document.getMathItemsWithin(el);
      if (items.length) return items[0].math;
    } catch (e) {}
    return (el.textContent || '').trim();
  };
  const overflow = (el, inner) => {
    // wider than the column, or scrolling inside its own box
    const r = (inner || el).getBoundingClientRect();
    const scrolls = el.scrollWidth > el.clientWidth + 1;
    const beyond = r.right > colRight + 1 || r.width > colWidth + 1;
    return {scrolls, beyond, width: Math.round(Math.max(r.width, el.scrollWidth)), over: scrolls || beyond};
  };
  const out = {url: location.href, title: document.title, mathjax, mathjaxVersion: mathjax ? MathJax.version : null,
               colWidth: Math.round(colWidth), equations: [], code: [], outputs: [], tables: [], images: [],
               links: [], rawTex: [], mjErrors: 0, scripts: [], pageHeight, emptyOutputs: []};
  // display maths: in the text (equations) and in cell outputs
  article.querySelectorAll('div.math').forEach(el => {
    if (!visible(el)) return;
    const box = el.querySelector('mjx-container');
    const inner = box ? (box.querySelector('mjx-math') || box) : el;
    const o = overflow(el, inner);
    const eqno = el.querySelector('.eqno');
    const rec = {over: o.over, width: o.width, id: el.id || '', eqno: eqno ? eqno.textContent.replace('#', '').trim() : '',
                 tex: texOf(el).slice(0, 160)};
    (where(el) === 'output' ? out.outputs : out.equations).push(Object.assign({kind: 'math'}, context(el), rec));
  });
  // how many characters of code fit in a code block: measure the monospace advance in a real <pre>
  const pre = article.querySelector('div.highlight pre');
  if (pre) {
    const pcs = getComputedStyle(pre);
    const probe = document.createElement('span');
    probe.textContent = 'M'.repeat(200);
    probe.style.whiteSpace = 'pre';
    pre.appendChild(probe);
    const cw = probe.getBoundingClientRect().width / 200;
    probe.remove();
    const preWrap = pre.closest('div.highlight') || pre;
    const inner = preWrap.getBoundingClientRect().width - parseFloat(pcs.paddingLeft) - parseFloat(pcs.paddingRight)
                  - parseFloat(pcs.borderLeftWidth) - parseFloat(pcs.borderRightWidth);
    out.code_metrics = {font: pcs.fontFamily, fontSize: pcs.fontSize, charWidth: cw, innerWidth: inner,
                        chars: Math.floor(inner / cw)};
  }
  const cap = out.code_metrics ? out.code_metrics.chars : 80;
  // code blocks and text outputs
  article.querySelectorAll('div.highlight pre').forEach(el => {
    if (!visible(el)) return;
    const o = overflow(el);
    const lines = el.textContent.replace(/\n$/, '').split('\n');
    const longest = Math.max(...lines.map(l => l.length));
    // input shown on the page, or collapsed behind a toggle (hide-input, hide-cell)
    const hidden = !!el.closest('details.hide, .tag_hide-input .cell_input, .tag_hide-cell');
    const rec = Object.assign(context(el), {over: o.over, width: o.width, longest, lines: lines.length,
                 first: lines[0].slice(0, 100), long: lines.filter(l => l.length > cap).length, hidden,
                 where: where(el)});
    if (where(el) === 'output') out.outputs.push(Object.assign({kind: 'text'}, rec));
    else out.code.push(rec);
  });
  // tables (text and outputs); pandas HTML outputs are tables inside .cell_output
  article.querySelectorAll('table').forEach(el => {
    if (!visible(el) || el.closest('div.math') || el.closest('mjx-container')) return;
    const wrap = el.parentElement;
    const o = overflow(wrap && wrap.scrollWidth > wrap.clientWidth + 1 ? wrap : el, el);
    const caption = el.querySelector('caption');
    out.tables.push(Object.assign(context(el), {over: o.over, width: o.width, where: where(el),
                     caption: caption ? caption.textContent.trim().slice(0, 80) : '',
                     head: (el.querySelector('tr') || el).textContent.trim().replace(/\s+/g, ' ').slice(0, 80)}));
  });
  // images
  article.querySelectorAll('img').forEach(el => {
    const fig = el.closest('figure');
    const cap = fig ? fig.querySelector('figcaption') : null;
    const num = cap ? cap.querySelector('.caption-number') : null;
    const alt = (el.getAttribute('alt') || '').trim();
    const r = el.getBoundingClientRect();
    out.images.push(Object.assign(context(el), {src: el.getAttribute('src'), loaded: el.complete && el.naturalWidth > 0,
                     natural: el.naturalWidth, shown: Math.round(r.width), alt,
                     // the width the page asks for (a 2x PNG is drawn at half its pixels), else the natural one
                     intended: parseFloat(el.style.width) || parseFloat(el.getAttribute('width')) || el.naturalWidth,
                     aspect: r.height > 0 && el.naturalHeight > 0
                       ? (r.width / r.height) / (el.naturalWidth / el.naturalHeight) : 1,
                     caption: cap ? cap.textContent.trim().replace(/\s+/g, ' ').slice(0, 100) : '',
                     numbered: !!num, id: fig ? (fig.id || '') : '', where: where(el)}));
  });
  // links: every href of the page (navigation included), resolved against the page
  document.querySelectorAll('a[href]').forEach(a => {
    const raw = a.getAttribute('href');
    out.links.push({raw, abs: a.href, text: a.textContent.trim().slice(0, 60)});
  });
  // raw TeX left in the visible text, outside code, typeset maths and MathJax's own nodes
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT, {acceptNode: n => {
    const p = n.parentElement;
    if (!p || p.closest('pre, code, mjx-container, script, style, .highlight, .math-source')) return NodeFilter.FILTER_REJECT;
    return NodeFilter.FILTER_ACCEPT;
  }});
  const texRe = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\end\{|\\(frac|sqrt|mathrm|mathbb|mathcal|bar|alpha|varepsilon|sigma|log)\b|\$[^$\s][^$\n]{0,200}?\$/g;
  let n;
  while ((n = walker.nextNode())) {
    const m = n.textContent.match(texRe);
    if (m) out.rawTex.push(n.textContent.trim().slice(0, 120));
  }
  // output boxes a reader sees empty: no text, no image, no maths, no table
  article.querySelectorAll('div.cell_output > *').forEach(el => {
    if (!visible(el)) return;
    if ((el.textContent || '').trim() || el.querySelector('img, svg, mjx-container, table, iframe, video')) return;
    out.emptyOutputs.push(Object.assign(context(el), {height: Math.round(el.getBoundingClientRect().height),
                                                        cls: String(el.className).slice(0, 60)}));
  });
  out.mjErrors = document.querySelectorAll('mjx-merror, [data-mjx-error]').length;
  out.hasMath = !!article.querySelector('.math, mjx-container');
  document.querySelectorAll('script[src]').forEach(s => out.scripts.push(s.src));
  document.querySelectorAll('link[rel=stylesheet][href], link[rel=preload][href]').forEach(l => out.scripts.push(l.href));
  out.elapsed_ms = Date.now() - t0;
  return out;
})().then(done, e => done({error: String(e && e.stack || e)}));
"""
)


# Runs in the page at any size: content cut off without its own scroll box, and the search boxes shown.
LAYOUT_JS = (
    WAIT_FOR_MATHJAX_JS
    + r"""
  const pageHeight = document.documentElement.scrollHeight;  // collapsed blocks closed, as a reader gets it
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  await new Promise(r => setTimeout(r, 100));
  const vw = document.documentElement.clientWidth;
  const kindOf = el => {
    if (el.closest('div.math')) return el.closest('.cell_output') ? 'output maths' : 'equation';
    if (el.closest('span.math, mjx-container')) return 'inline maths';
    if (el.closest('table')) return 'table';
    if (el.closest('.cell_output, .output')) return 'output';
    if (el.closest('div.highlight, pre')) return 'code';
    if (el.closest('figure, img')) return 'figure';
    return el.tagName.toLowerCase() === 'code' ? 'inline code' : 'text';
  };
  const section = el => {
    const sec = el.closest('section');
    const h = sec ? sec.querySelector('h1, h2, h3, h4') : null;
    return h ? h.textContent.replace('#', '').trim().slice(0, 60) : '';
  };
  const clipped = [], seen = new Set();
  const report = (el, r, box) => {
    const top = el.closest('div.math, table, div.highlight, .cell_output, figure, p, li, dd, dt, h1, h2, h3, h4') || el;
    if (seen.has(top)) return;  // one finding per construct
    seen.add(top);
    clipped.push({kind: kindOf(el), section: section(el), width: Math.round(r.width), right: Math.round(r.right),
                  box: Math.round(box.right), by: box.el ? box.el.tagName.toLowerCase() + '.' + String(box.el.className).split(' ')[0] : 'screen',
                  text: (el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 80)});
  };
  // Walk the page carrying the nearest box that scrolls sideways (overflow-x auto/scroll: anything inside is
  // reachable) or clips (hidden/clip, or the screen itself): an element beyond a clipping box is cut off.
  const walk = (el, clip) => {
    for (const child of el.children) {
      const cs = getComputedStyle(child);
      if (cs.display === 'none' || cs.visibility === 'hidden' || cs.position === 'fixed') continue;
      if (child.matches('mjx-assistive-mml, .visually-hidden, .sr-only, script, style, dialog:not([open])')) continue;
      const r = child.getBoundingClientRect();
      if (r.width > 0 && r.height > 0 && clip.mode === 'clip' && (r.right > clip.right + 1 || r.left < clip.left - 1)) {
        report(child, r, clip);
        continue;
      }
      if (child.matches('mjx-container, svg, img, video, canvas, iframe')) continue;  // measured as a whole
      const ox = cs.overflowX;
      let next = clip;
      if (ox === 'auto' || ox === 'scroll') next = {mode: 'scroll', left: r.left, right: r.right, el: child};
      else if ((ox === 'hidden' || ox === 'clip') && r.right <= clip.right + 1 && r.left >= clip.left - 1)
        next = {mode: 'clip', left: r.left, right: r.right, el: child};
      walk(child, next);
    }
  };
  walk(document.body, {mode: 'clip', left: 0, right: vw, el: null});
  // search boxes a reader sees (the search dialog itself excluded)
  const searches = [...document.querySelectorAll('.search-button__button, form.bd-search, input[type=search]')]
    .filter(el => !el.closest('.search-button__wrapper, dialog') && el.getClientRects().length
            && getComputedStyle(el).visibility !== 'hidden'
            && el.getBoundingClientRect().width > 0).length;
  return {vw, docWidth: document.documentElement.scrollWidth, clipped, searches, pageHeight, ms: Date.now() - t0};
})().then(done, e => done({error: String(e && e.stack || e)}));
"""
)


def measure_layout(drv) -> dict:
    res = drv.execute_async_script(LAYOUT_JS)
    if isinstance(res, dict) and res.get("error"):
        raise RuntimeError(res["error"])
    return res


def measure_page(drv, page: Path) -> dict:
    drv.get(page.as_uri())
    res = drv.execute_async_script(MEASURE_JS)
    if isinstance(res, dict) and res.get("error"):
        raise RuntimeError(f"{page}: {res['error']}")
    return res


# ---------------------------------------------------------------------------------------------------------
# Links: checked against the built files


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)


_ID_CACHE: dict[Path, set[str]] = {}


def ids_of(path: Path) -> set[str]:
    if path not in _ID_CACHE:
        p = _Ids()
        p.feed(path.read_text(errors="replace"))
        _ID_CACHE[path] = p.ids
    return _ID_CACHE[path]


def broken_links(page: Path, links: list[dict], html_dir: Path) -> list[str]:
    """Internal links (same book) whose target file or anchor is missing."""
    bad = []
    for link in links:
        raw = link["raw"] or ""
        if raw.startswith(("http://", "https://", "mailto:", "javascript:", "data:")) or raw in ("", "#"):
            continue
        parts = urlsplit(link["abs"])
        if parts.scheme != "file":
            continue
        target = Path(unquote(parts.path))
        if target.is_dir():
            target = target / "index.html"
        try:
            target.resolve().relative_to(html_dir.resolve())
        except ValueError:
            bad.append(f"{raw} (outside the book)")
            continue
        if not target.exists():
            bad.append(f"{raw} (no such file)")
            continue
        frag = unquote(parts.fragment)
        if frag and target.suffix == ".html" and frag not in ids_of(target):
            bad.append(f"{raw} (no anchor #{frag})")
    return sorted(set(bad))


# ---------------------------------------------------------------------------------------------------------
# Summaries


@dataclass
class PageReport:
    page: str
    raw: dict
    broken: list[str] = field(default_factory=list)

    def count(self, what: str) -> tuple[int, int]:
        """(bad, total) for one check."""
        r = self.raw
        if what == "equations":
            items = r["equations"]
            return sum(e["over"] for e in items), len(items)
        if what == "code":
            return sum(e["over"] for e in r["code"]), len(r["code"])
        if what == "code_lines":
            return sum(e["long"] for e in r["code"]), sum(e["lines"] for e in r["code"])
        if what == "outputs":
            return sum(e["over"] for e in r["outputs"]), len(r["outputs"])
        if what == "tables":
            return sum(e["over"] for e in r["tables"]), len(r["tables"])
        if what == "raw_tex":
            return len(r["rawTex"]), len(r["rawTex"])
        if what == "mathjax_errors":
            # +1 when MathJax did not load on a page with maths (Sphinx loads it only where there is some)
            return r["mjErrors"] + (0 if r["mathjax"] or not r.get("hasMath", True) else 1), r["mjErrors"]
        imgs = r["images"]
        if what == "images_broken":
            return sum(not i["loaded"] for i in imgs), len(imgs)
        if what == "images_alt":
            return sum(not good_alt(i["alt"], i["src"]) for i in imgs), len(imgs)
        if what == "images_caption":
            return sum(not (i["caption"] and i["numbered"]) for i in imgs), len(imgs)
        if what == "images_small":
            return sum(_small(i) for i in imgs), len(imgs)
        if what == "images_aspect":
            return sum(abs(i.get("aspect", 1) - 1) > 0.02 for i in imgs), len(imgs)
        if what == "empty_outputs":
            return len(r.get("emptyOutputs", [])), len(r["outputs"])
        if what == "links":
            return len(self.broken), len(r["links"])
        if what == "clipped":
            ph = r.get("phone", {})
            return len(ph.get("clipped", [])), len(ph.get("clipped", []))
        if what == "console":
            n = len(r.get("console", [])) + len(r.get("phone", {}).get("console", []))
            return n, n
        if what == "search":
            counts = [r.get("layout", {}).get("searches"), r.get("phone", {}).get("searches")]
            return sum(c != 1 for c in counts), len(counts)
        raise KeyError(what)

    def size(self, what: str) -> int | None:
        """A measure of the page (not a check): see :data:`SIZES`."""
        r = self.raw
        if what == "height":
            return r.get("pageHeight")
        if what == "phone_height":
            return r.get("phone", {}).get("pageHeight")
        if what == "code_lines_visible":
            return sum(c["lines"] for c in r["code"] if c["where"] == "input" and not c.get("hidden"))
        if what == "code_lines_all":
            return sum(c["lines"] for c in r["code"] if c["where"] == "input")
        if what == "tables":
            return len(r["tables"])
        raise KeyError(what)


def _small(i: dict) -> bool:
    """Shown below SMALL_FIGURE of the width the page asks for (a 2x PNG asks for half its pixels)."""
    want = i.get("intended") or i["natural"]
    return bool(want) and i["shown"] < SMALL_FIGURE * want


# Measures of each page printed next to the checks: (column header, explanation)
SIZES = {
    "height": ("h1280", "page height at 1280 px, collapsed blocks closed (CSS px)"),
    "phone_height": ("h390", f"page height at {PHONE[0]}x{PHONE[1]}, collapsed blocks closed (CSS px)"),
    "code_lines_visible": ("vis", "lines of code cells shown on the page (hide-input cells not counted)"),
    "code_lines_all": ("code", "lines of all code cells on the page (collapsed ones included)"),
    "tables": ("tabs", "HTML tables in the main content"),
}


CHECKS = {
    # name: (column header, explanation)
    "equations": ("eq", "display equations wider than the text column"),
    "code": ("code", "code blocks wider than the text column (they scroll)"),
    "code_lines": ("lines", "lines of code longer than a code block holds (see the characters per line below)"),
    "outputs": ("out", "cell outputs (text or maths) wider than the text column"),
    "tables": ("tab", "tables wider than the text column"),
    "raw_tex": ("tex", "text nodes with raw TeX left (MathJax did not typeset them)"),
    "mathjax_errors": ("mjerr", "MathJax error nodes (+1 when MathJax did not load on a page with maths)"),
    "images_broken": ("img!", "images that did not load"),
    "images_alt": ("alt", "images without alt text (or with a file name as alt text)"),
    "images_caption": ("cap", "images not inside a numbered figure with a caption"),
    "images_small": ("small", f"images shown below {SMALL_FIGURE:.0%} of their width (a 2x PNG: half its pixels)"),
    "images_aspect": ("asp", "images drawn with another aspect ratio than their pixels (squashed)"),
    "empty_outputs": ("empty", "cell output boxes with nothing in them (no text, image, maths or table)"),
    "links": ("link", "internal links whose file or anchor is missing"),
    "clipped": ("cut", f"constructs cut off at {PHONE[0]}x{PHONE[1]} without a sideways-scrolling box of their own"),
    "console": ("js!", "errors in the browser console (both sizes)"),
    "search": ("srch", "sizes (1280 px, phone) at which the page does not show exactly one search box"),
}


def good_alt(alt: str, src: str | None) -> bool:
    if not alt:
        return False
    name = Path(unquote(src or "")).name
    if alt == src or (name and name in alt):
        return False
    return not re.fullmatch(r"[./_A-Za-z0-9-]*[0-9a-f]{16,}[./_A-Za-z0-9-]*", alt)


def table(reports: list[PageReport], checks=CHECKS) -> str:
    """Per-page table: bad/total for each check."""
    heads = ["page"] + [checks[c][0] for c in checks]
    rows = []
    totals = {c: [0, 0] for c in checks}
    for rep in reports:
        row = [rep.page]
        for c in checks:
            bad, tot = rep.count(c)
            totals[c][0] += bad
            totals[c][1] += tot
            row.append(f"{bad}" if c in ("raw_tex", "mathjax_errors") else f"{bad}/{tot}")
        rows.append(row)
    rows.append(
        ["TOTAL"]
        + [
            f"{totals[c][0]}" if c in ("raw_tex", "mathjax_errors") else f"{totals[c][0]}/{totals[c][1]}"
            for c in checks
        ]
    )
    widths = [max(len(str(r[i])) for r in rows + [heads]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(heads), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    legend = ["", "bad/total per page; columns:"] + [f"  {checks[c][0]:>5}: {checks[c][1]}" for c in checks]
    return "\n".join(lines + legend)


def sizes_table(reports: list[PageReport], sizes=SIZES) -> str:
    """Per-page measures (page heights, code lines shown, tables), with totals."""
    heads = ["page"] + [sizes[c][0] for c in sizes]
    rows = [[rep.page] + [rep.size(c) if rep.size(c) is not None else "-" for c in sizes] for rep in reports]
    rows.append(["TOTAL"] + [sum(v for v in col if isinstance(v, int)) for col in list(zip(*rows))[1:]])
    widths = [max(len(str(r[i])) for r in rows + [heads]) for i in range(len(heads))]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(heads), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    legend = ["", "measures per page; columns:"] + [f"  {sizes[c][0]:>5}: {sizes[c][1]}" for c in sizes]
    return "\n".join(lines + legend)


def _where(item: dict) -> str:
    bits = []
    if item.get("section"):
        bits.append(f"section {item['section']!r}")
    if item.get("cell"):
        bits.append(f"cell {item['cell'].strip()[:60]!r}")
    return f" [{'; '.join(bits)}]" if bits else ""


def findings(reports: list[PageReport]) -> str:
    """Which constructs fail, page by page, for the chapter authors."""
    out = []
    for rep in reports:
        r = rep.raw
        items = []
        for e in r["equations"]:
            if e["over"]:
                tex = " ".join(e["tex"].split())
                items.append(
                    f"  equation {e['eqno'] or '(unnumbered)'} #{e['id']}: {e['width']} px > {r['colWidth']} px"
                    f"{_where(e)}: {tex[:110]}"
                )
        for o in r["outputs"]:
            if o["over"]:
                if o["kind"] == "math":
                    items.append(f"  output maths {o['width']} px{_where(o)}: {' '.join(o['tex'].split())[:100]}")
                else:
                    items.append(
                        f"  output text, longest line {o['longest']} chars ({o['width']} px){_where(o)}: "
                        f"{o['first'][:70]!r}"
                    )
        for c in r["code"]:
            if c["over"]:
                items.append(
                    f"  code block, longest line {c['longest']} chars ({c['width']} px), {c['long']} of {c['lines']} "
                    f"lines too long{_where(c)}: {c['first'][:70]!r}"
                )
        for t in r["tables"]:
            if t["over"]:
                items.append(f"  table ({t['where']}) {t['width']} px{_where(t)}: {t['head'][:80]!r}")
        for i in r["images"]:
            probs = []
            if not i["loaded"]:
                probs.append("not loaded")
            if not good_alt(i["alt"], i["src"]):
                probs.append(f"alt text {i['alt'][:40]!r}")
            if not (i["caption"] and i["numbered"]):
                probs.append("no numbered caption")
            if _small(i):
                want = i.get("intended") or i["natural"]
                probs.append(f"shown at {i['shown'] / want:.0%} ({i['shown']} of {want:.0f} px)")
            if abs(i.get("aspect", 1) - 1) > 0.02:
                probs.append(f"aspect ratio drawn {i['aspect']:.2f} x its own")
            if probs:
                items.append(
                    f"  image {Path(i['src'] or '').name[:12]}... {', '.join(probs)}{_where(i)}"
                    + (f"; caption {i['caption'][:60]!r}" if i["caption"] else "")
                )
        for e in r.get("emptyOutputs", []):
            items.append(f"  empty output box ({e['height']} px, {e['cls']!r}){_where(e)}")
        for c in r.get("phone", {}).get("clipped", []):
            items.append(
                f"  clipped at {PHONE[0]} px: {c['kind']} {c['width']} px reaching {c['right']} px, cut by "
                f"{c['by']} at {c['box']} px [section {c['section']!r}]: {c['text'][:70]!r}"
            )
        for where, key in (("1280 px", r), ("phone", r.get("phone", {}))):
            for m in key.get("console", []):
                items.append(f"  console error ({where}): {m[:160]}")
        for where, key in (("1280 px", r.get("layout", {})), ("phone", r.get("phone", {}))):
            if key.get("searches") not in (None, 1):
                items.append(f"  search boxes ({where}): {key.get('searches')}, not 1")
        for t in r["rawTex"]:
            items.append(f"  raw TeX: {t[:110]!r}")
        if r["mjErrors"]:
            items.append(f"  {r['mjErrors']} MathJax error node(s)")
        for b in rep.broken:
            items.append(f"  broken link {b}")
        out.append(f"{rep.page}: {len(items)} finding(s)")
        out.extend(items)
        out.append("")
    return "\n".join(out)


def measure_book(html_dir: Path, phone: bool = True) -> tuple[list[PageReport], dict]:
    """Open every page (at 1280 px, then, with ``phone``, at 390x844); return the per-page reports and the layout
    metrics (column width, code capacity)."""
    html_dir = Path(html_dir)
    drv = make_driver()
    reports, metrics = [], {}
    try:
        console_errors(drv)  # start with an empty log
        for page in book_pages(html_dir):
            raw = measure_page(drv, page)
            raw["layout"] = measure_layout(drv)
            raw["console"] = console_errors(drv)
            rel = page.relative_to(html_dir).as_posix()
            reports.append(PageReport(rel, raw, broken_links(page, raw["links"], html_dir)))
            if raw.get("code_metrics") and "code" not in metrics:
                metrics["code"] = raw["code_metrics"]
            metrics.setdefault("column_px", raw["colWidth"])
            if raw["mathjaxVersion"]:
                metrics.setdefault("mathjax", raw["mathjaxVersion"])
            metrics.setdefault("scripts", [])
            metrics["scripts"] = sorted(set(metrics["scripts"]) | set(raw["scripts"]))
        if phone:
            set_screen(drv, PHONE)
            for rep in reports:
                drv.get((html_dir / rep.page).as_uri())
                rep.raw["phone"] = measure_layout(drv)
                rep.raw["phone"]["console"] = console_errors(drv)
            metrics["phone"] = {"viewport": reports[0].raw["phone"]["vw"] if reports else None}
    finally:
        close_driver(drv)
    return reports, metrics


def describe_metrics(metrics: dict) -> str:
    lines = [f"window {WINDOW[0]} px: text column {metrics.get('column_px')} px; MathJax {metrics.get('mathjax')}"]
    if metrics.get("phone"):
        lines.append(f"phone: {PHONE[0]}x{PHONE[1]} CSS px (viewport {metrics['phone']['viewport']} px wide)")
    c = metrics.get("code")
    if c:
        lines.append(
            f"code blocks: {c['innerWidth']:.0f} px inside the padding, {c['fontSize']} {c['font'].split(',')[0]}, "
            f"{c['charWidth']:.2f} px a character: {c['chars']} characters fit on a line"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=Path, help="an already built book (folder with index.html); default: build one")
    ap.add_argument("--out", type=Path, help="write the table here too")
    ap.add_argument("--findings", type=Path, help="write the per-construct findings here")
    args = ap.parse_args(argv)
    why = missing_requirements()
    if why:
        print(why, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    tmp = None
    if args.html:
        html_dir = args.html
    else:
        tmp = tempfile.mkdtemp(prefix="book-html-")
        html_dir = build_book(Path(tmp))
    t1 = time.perf_counter()
    reports, metrics = measure_book(html_dir)
    t2 = time.perf_counter()
    text = (
        table(reports)
        + "\n\n"
        + sizes_table(reports)
        + "\n\n"
        + describe_metrics(metrics)
        + (f"\nbuild {t1 - t0:.1f} s, browser {t2 - t1:.1f} s for {len(reports)} pages\n")
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.findings:
        args.findings.write_text(describe_metrics(metrics) + "\n\n" + findings(reports))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
