r"""The book's figure style, and the figures (with the small computations behind them) of the derivation and
library chapters.

* :func:`book_style`: every chapter calls it once (its import cell): figures as 2x-resolution PNGs ("retina":
  sharp on high-density screens, shown at their 1x size) and font sizes that stay readable on a phone;
* :func:`smallest_text_px`: the size, in CSS pixels, of a figure's smallest text once the figure is scaled down
  to a phone's text column (the book's figures keep it at :data:`MIN_PHONE_TEXT_PX` or more);
* :func:`correction_demo` and :func:`correction_demo_figure`: the accelerated ODE step's extrapolated noise
  prediction against DDIM's frozen one, along the exact probability-flow path of a 1-D mixture (chapter
  *Accelerated ODE*);
* :func:`error_vs_nfe_figure`, :func:`image_rows_figure`, :func:`benchmark_figure`: the other figures of those
  chapters.

matplotlib is imported inside the functions only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import samplers, updates

__all__ = [
    "BOOK_RC",
    "PHONE_COLUMN_PX",
    "MIN_PHONE_TEXT_PX",
    "MAX_FIGURE_WIDTH_IN",
    "book_style",
    "smallest_text_px",
    "correction_demo",
    "correction_demo_figure",
    "error_vs_nfe_figure",
    "image_rows_figure",
    "benchmark_figure",
    "coefficient_gap",
]

#: Width, in CSS pixels, of the book's text column on a 390 px phone screen (the screen less the page margins;
#: measured in headless Chromium, rounded down).
PHONE_COLUMN_PX = 350
#: The smallest text a figure may show on that phone, in CSS pixels.
MIN_PHONE_TEXT_PX = 8.0
#: The widest figure (inches at 100 CSS pixels an inch) whose 10-point text stays at MIN_PHONE_TEXT_PX on a phone:
#: 10 pt = 13.9 px at 1x, scaled by PHONE_COLUMN_PX / (100 * width).
MAX_FIGURE_WIDTH_IN = 6.0

#: matplotlib settings of the book's figures: 100 CSS pixels an inch (the PNG carries twice as many, see
#: :func:`book_style`), no text below 10 points.
BOOK_RC = {
    "figure.dpi": 100,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 11,
}


def book_style() -> None:
    """The book's figure style: :data:`BOOK_RC`, and, in a Jupyter kernel, figures shown as 2x-resolution PNGs
    ("retina": twice the pixels, displayed at the 1x size, so that the text is sharp on high-density screens).

    Called once at the top of every chapter; outside a kernel only the matplotlib settings change."""
    import matplotlib as mpl

    mpl.rcParams.update(BOOK_RC)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every Jupyter kernel
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")


def smallest_text_px(fig, column_px: float = PHONE_COLUMN_PX) -> float:
    """The smallest visible text of ``fig`` in CSS pixels once the figure (as saved with a tight bounding box, at
    100 CSS pixels an inch) is scaled to fit a text column ``column_px`` wide; figures narrower than the column
    are not scaled up. ``inf`` for a figure without text."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width_in = fig.get_tightbbox(renderer).width  # inches
    scale = min(1.0, column_px / (100.0 * width_in))
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and t.get_window_extent(renderer).width > 0
    ]
    if not sizes:
        return math.inf
    return min(sizes) * 100.0 / 72.0 * scale


# ----------------------------------------------------------------------------------------------------------------
# Chapter "Accelerated ODE": the correction along the exact path
# ----------------------------------------------------------------------------------------------------------------
def _abar_of_sigma(s):
    return 1.0 / (1.0 + s * s)


def correction_demo(target, *, sigma_start=4.0, sigma_end=0.15, y_start=0.05, num_steps=6) -> dict:
    r"""The exact probability-flow path of a one-dimensional ``target`` (anything with ``eps(x, alpha_bar)``, e.g.
    a :class:`~accelerated_diffusion.GaussianMixture`) in the variables :math:`(\sigma, y = x/\sqrt{\bar\alpha})`,
    where :math:`dy/d\sigma = \varepsilon` (eq. deriv-pf-ode-sigma), solved by ``scipy.integrate.solve_ivp``
    from :math:`y(\sigma_{start}) = y_{start}`; the ``num_steps`` step levels uniform in
    :math:`\lambda = -\log\sigma`; and, from every step but the first (which has no previous evaluation), the
    absolute one-step error of the DDIM step and of the accelerated ODE step (eq. deriv-accel-ode) started on the
    exact path with the exact noise predictions.

    Returns ``sigma`` (levels), ``alpha_bar``, ``x`` and ``eps`` on the path at the levels, ``fine_sigma`` and
    ``fine_eps`` (the path at 300 levels, for plotting) and ``one_step_error`` {"ddim": [...],
    "accelerated_ode": [...]} (steps 2 to ``num_steps``)."""
    from scipy.integrate import solve_ivp

    if not (sigma_start > sigma_end > 0):
        raise ValueError(f"need sigma_start > sigma_end > 0, got {sigma_start}, {sigma_end}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (a previous evaluation), got {num_steps}")

    def eps_exact(x, a):
        xt = torch.tensor([[float(x)]], dtype=torch.float64)
        return float(target.eps(xt, a))

    sol = solve_ivp(
        lambda s, y: [eps_exact(math.sqrt(_abar_of_sigma(s)) * y[0], _abar_of_sigma(s))],
        (sigma_start, sigma_end),
        [y_start],
        rtol=1e-11,
        atol=1e-12,
        dense_output=True,
    )
    lam = np.linspace(-math.log(sigma_start), -math.log(sigma_end), num_steps + 1)
    sig = np.exp(-lam)  # step levels, noisiest first
    abar = _abar_of_sigma(sig)
    x_path = np.sqrt(abar) * sol.sol(sig)[0]
    eps_path = np.array([eps_exact(x, a) for x, a in zip(x_path, abar)])
    fine = np.geomspace(sigma_start, sigma_end, 300)
    eps_fine = [eps_exact(math.sqrt(_abar_of_sigma(s)) * sol.sol(s)[0], _abar_of_sigma(s)) for s in fine]
    one_step_error = {"ddim": [], "accelerated_ode": []}
    for k in range(1, num_steps):
        x_k, e_k, e_prev = (torch.tensor([v], dtype=torch.float64) for v in (x_path[k], eps_path[k], eps_path[k - 1]))
        out = {
            "ddim": updates.ddim_step(x_k, e_k, abar[k], abar[k + 1]),
            "accelerated_ode": updates.accelerated_ode_step(x_k, e_k, abar[k], abar[k + 1], e_prev, abar[k - 1]),
        }
        for name, o in out.items():
            one_step_error[name].append(abs(float(o) - x_path[k + 1]))
    return {
        "sigma": sig,
        "alpha_bar": abar,
        "x": x_path,
        "eps": eps_path,
        "fine_sigma": fine,
        "fine_eps": eps_fine,
        "one_step_error": one_step_error,
    }


def correction_demo_figure(demo: dict, figsize=(MAX_FIGURE_WIDTH_IN, 5.2)):
    """Top: the exact noise prediction along the path of :func:`correction_demo`, DDIM's frozen value and the
    accelerated step's line in alpha_bar over each step; bottom: the one-step errors. Returns the figure."""
    import matplotlib.pyplot as plt

    sig, abar, eps = demo["sigma"], demo["alpha_bar"], demo["eps"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=figsize, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(demo["fine_sigma"], demo["fine_eps"], "k", lw=1.5, label="exact ε along the exact path")
    for k in range(1, len(sig) - 1):
        s_seg = np.geomspace(sig[k], sig[k + 1], 50)
        slope = (eps[k] - eps[k - 1]) / (abar[k] - abar[k - 1])
        ax.plot(
            s_seg,
            np.full_like(s_seg, eps[k]),
            color="tab:orange",
            ls="--",
            lw=2,
            label="DDIM: frozen" if k == 1 else None,
        )
        ax.plot(
            s_seg,
            eps[k] + (_abar_of_sigma(s_seg) - abar[k]) * slope,
            color="tab:green",
            lw=2,
            label="accelerated: linear in ᾱ" if k == 1 else None,
        )
    ax.plot(sig, eps, "ko", ms=4, label="network evaluations")
    ax.set_xscale("log")
    ax.set_xticks([4, 2, 1, 0.5, 0.25], ["4", "2", "1", "0.5", "0.25"])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel(r"noise-to-signal ratio $\sigma$ (sampling: left to right)")
    ax.set_ylabel(r"noise prediction $\varepsilon$")
    ax.legend()
    steps_shown = np.arange(2, len(sig))
    for j, (name, e) in enumerate(demo["one_step_error"].items()):
        ax2.bar(
            steps_shown + (j - 0.5) * 0.38,
            e,
            0.38,
            label=samplers.label(name),
            color=["tab:orange", "tab:green"][j],
        )
    ax2.set_yscale("log")
    ax2.set_xlabel("step (step 1: no previous evaluation, DDIM in both)")
    ax2.set_ylabel("|one-step error in x|")
    ax2.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Chapter "Baseline samplers"
# ----------------------------------------------------------------------------------------------------------------
def coefficient_gap(alpha_bar_t: float, h: float) -> float:
    r"""The gap :math:`|c_\varepsilon^{\text{DDIM-type}} - c_\varepsilon^{\text{DDIM}}|` between the noise
    coefficients of the DDIM-type and the exact DDIM step (``updates``) from ``alpha_bar_t`` with step size
    :math:`h = 1 - \alpha_t`, i.e. to :math:`\bar\alpha_{t-1} = \bar\alpha_t/(1-h)` (which must stay below 1)."""
    alpha_bar_prev = alpha_bar_t / (1 - h)
    if not (0 < alpha_bar_t < alpha_bar_prev < 1):
        raise ValueError(f"need 0 < alpha_bar_t < alpha_bar_t / (1 - h) < 1, got {alpha_bar_t}, h = {h}")
    return abs(
        updates.ddim_type_coefficients(alpha_bar_t, alpha_bar_prev)[1]
        - updates.ddim_coefficients(alpha_bar_t, alpha_bar_prev)[1]
    )


# ----------------------------------------------------------------------------------------------------------------
# Other chapter figures
# ----------------------------------------------------------------------------------------------------------------
def error_vs_nfe_figure(nfe, errors: dict, ylabel: str, figsize=(MAX_FIGURE_WIDTH_IN, 3.8)):
    """Log-log plot of ``errors`` {sampler name: [error per NFE]} against ``nfe``, one line per sampler (its
    display label). Returns the figure."""
    import matplotlib.pyplot as plt

    for name, e in errors.items():
        if len(e) != len(nfe):
            raise ValueError(f"{name}: {len(e)} errors for {len(nfe)} NFE values")
    fig, ax = plt.subplots(figsize=figsize)
    for name, e in errors.items():
        ax.loglog(nfe, e, "o-", label=samplers.label(name))
    ax.set_xlabel("number of steps (NFE)")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def image_rows_figure(rows: dict, *, cmap=None, height=1.1, width=MAX_FIGURE_WIDTH_IN):
    """A grid of images, one row per entry of ``rows`` {row label: array (n, H, W) or (n, H, W, C) in [0, 1]},
    the label to the left of each row (no label when there is one unnamed row, key ""). Returns the figure."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no rows of images")
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(width, height * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(imgs):
                img = np.asarray(imgs[c])
                if img.ndim == 3 and img.shape[-1] == 1:
                    img = img[..., 0]
                ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            else:
                ax.axis("off")
        if label:
            axes[r, 0].set_ylabel(label)
    fig.tight_layout()
    return fig


def benchmark_figure(bench: dict, figsize=(MAX_FIGURE_WIDTH_IN, 3.6)):
    """Horizontal bars: each scheduler's step time as a percentage of one UNet forward pass, from the results of
    ``benchmarks/scheduler_overhead.py`` (``bench["schedulers"][label]["fraction_of_forward"]``), with the
    target fraction as a dashed line. Returns the figure."""
    import matplotlib.pyplot as plt

    rows = bench["schedulers"]
    fig, ax = plt.subplots(figsize=figsize)
    fractions = [100 * r["fraction_of_forward"] for r in rows.values()]
    ax.barh(list(rows), fractions, color="tab:blue")
    limit = 100 * bench["target_fraction"]
    ax.axvline(limit, color="tab:red", ls="--", label=f"{limit:.0f} % of a forward pass")
    ax.set_xlabel("scheduler step / UNet forward (%)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
