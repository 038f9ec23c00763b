"""The report's plots: training curves and evaluation scores of one or more runs."""

import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any, Union

from matplotlib.backends import backend_agg
from matplotlib import figure
from matplotlib import ticker

from ttsr_jax.runs import Run

PathLike = Union[str, os.PathLike]

PLOT_SIZE = (6.4, 4.0)  # inches
PLOT_DPI = 100  # so each plot is 640 x 400 pixels
# Plot order of the train/* groups and of the loss terms (the reference's order); others follow
# alphabetically.
_GROUPS = {"loss": "Losses", "d": "Discriminator", "lr": "Learning rates",
           "grad_norm": "Gradient norms"}
_LOSS_TERMS = ("rec", "per", "tpl", "adv", "total")


def plot(path: PathLike, title: str, xlabel: str,
         lines: Sequence[tuple[str, Sequence[float], Sequence[float], dict[str, Any]]]) -> None:
  """A PLOT_SIZE line plot of (label, x, y, matplotlib style) lines, with a legend if several."""
  fig = figure.Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label, x, y, style in lines:
    ax.plot(x, y, label=label, **style)
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # steps and epochs
  ax.grid(alpha=0.3)
  if len(lines) > 1:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=PLOT_DPI)


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _rank(name: str, known: Sequence[str]) -> tuple[int, str]:
  """Sort key: the names in `known` in its order, then the others alphabetically."""
  return (known.index(name) if name in known else len(known), name)


def _train_tags(runs: Sequence[Run]) -> dict[str, list[str]]:
  """train/* scalar tags by group ('loss', 'd', ...), in plot order; the weighted copies of the
  loss terms are left out (each is its weight times the term)."""
  groups: dict[str, list[str]] = {}
  for tag in {t for run in runs for t in run.scalars}:
    if tag.startswith("train/") and not tag.endswith("_weighted"):
      groups.setdefault(tag.split("/")[1], []).append(tag)
  return {group: sorted(groups[group], key=lambda t: _rank(t.split("/")[-1], _LOSS_TERMS))
          for group in sorted(groups, key=lambda g: _rank(g, list(_GROUPS)))}


def plot_curves(runs: Sequence[Run], out_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """Writes the train/* and eval/* plots under `out_dir`; returns them by README section."""
  out_dir.mkdir(parents=True, exist_ok=True)
  sections: dict[str, list[pathlib.Path]] = {}
  colors = {run.name: f"C{i}" for i, run in enumerate(runs)}

  evaluated = [run for run in runs if run.protocols()]
  by_epoch = bool(evaluated) and all(run.steps_per_epoch for run in evaluated)
  xlabel = "epoch (warm-up included)" if by_epoch else "step"
  for protocol in sorted({p for run in evaluated for p in run.protocols()}):
    for metric in ("psnr", "ssim"):
      lines = []
      for run in evaluated:
        for tag, label, style in ((f"eval/{protocol}/{metric}", run.name, {"marker": "o"}),
                                  (f"eval/{protocol}/bicubic_{metric}", f"{run.name} (bicubic)",
                                   {"linestyle": "--"})):
          if tag in run.scalars:
            steps, values = zip(*run.scalars[tag])
            x = [s / run.steps_per_epoch for s in steps] if by_epoch else steps
            lines.append((label, x, values, {"color": colors[run.name], **style}))
      path = out_dir / f"eval_{protocol}_{metric}.png"
      plot(path, f"{protocol}: {metric.upper()}", xlabel, lines)
      sections.setdefault("Evaluation", []).append(path)

  for group, tags in _train_tags(runs).items():
    for tag in tags:
      lines = [(run.name, *zip(*run.scalars[tag]), {"color": colors[run.name]})
               for run in runs if tag in run.scalars]
      path = out_dir / f"{slug(tag)}.png"
      plot(path, tag, "step", lines)
      sections.setdefault(_GROUPS.get(group, group), []).append(path)
  return sections
