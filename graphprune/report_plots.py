"""The report's figures (:func:`graphprune.report_html.figures`) as PNG files, drawn with
matplotlib (the optional ``report`` extra: ``pip install 'graphprune[report]'``). The HTML page
does not need this module; ``--plots DIR`` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import OptionError
from .report_html import Figure, figures

__all__ = ["require_matplotlib", "write_plots"]


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError("--plots needs matplotlib: pip install 'graphprune[report]' (or leave out --plots; "
                          "the .html report draws its charts without it)") from None


def _draw(fig: Figure, path: Path) -> None:
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no global figure state

    n = len(fig.categories)
    mfig = MplFigure(figsize=(10, max(2.0, 0.28 * n + 1.2)), dpi=110)
    ax = mfig.subplots()
    ys = list(range(n))
    vals = fig.scaled() if fig.normalize else [list(s.values) for s in fig.series]
    if fig.overlay and len(fig.series) == 2:
        ax.barh(ys, vals[0], height=0.8, color=fig.series[0].color, label=fig.series[0].label)
        ax.barh(ys, vals[1], height=0.45, color=fig.series[1].color, label=fig.series[1].label)
    else:
        h = 0.8 / max(1, len(fig.series))
        for j, s in enumerate(fig.series):
            ax.barh([y - 0.4 + h * (j + 0.5) for y in ys], vals[j], height=h, color=s.color, label=s.label)
    ax.set_yticks(ys)
    ax.set_yticklabels([c if len(c) <= 34 else "..." + c[-31:] for c in fig.categories], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(fig.unit)
    ax.set_title(fig.title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    mfig.tight_layout()
    mfig.savefig(path, format="png")


def write_plots(rep: dict[str, Any], directory: str | Path) -> list[Path]:
    """One PNG per figure in ``directory`` (created), each written atomically; returns the paths."""
    from .export import write_atomic

    require_matplotlib()
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--plots {out}: exists and is not a directory; give a directory for the PNG files")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig in figures(rep):
        path = out / f"{fig.key}.png"
        write_atomic(path, lambda tmp, fig=fig: _draw(fig, tmp))
        paths.append(path)
    return paths
