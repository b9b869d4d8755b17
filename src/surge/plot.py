"""``surge plot``: PNG charts of every logged metric over steps, several runs overlaid.

Reads ``metrics.csv`` (CSVLogger) and TensorBoard event files (TensorBoardLogger; needs the
``tensorboard`` package) found anywhere under the folders given. Each folder holding such files is
one run, named by its path. Needs matplotlib (``pip install matplotlib``); draws with the Agg
backend, so no display is needed.

Example::

    surge plot runs/surge_logs/version_0 runs/surge_logs/version_1 --out charts
    # charts/train_loss.png, charts/val_loss.png, ... one line per run in each
"""
from __future__ import annotations

import argparse
import csv
import os
import re
from typing import Iterable, Optional

Series = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]
_SKIP = {"step", "epoch"}


def read_csv_metrics(path: str) -> Series:
    """``metrics.csv`` as series; empty cells (a metric not logged in that row) are skipped."""
    out: Series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                continue
            for key, cell in row.items():
                if key in _SKIP or key is None or cell in ("", None):
                    continue
                try:
                    out.setdefault(key, []).append((step, float(cell)))
                except ValueError:
                    pass
    return out


def read_tensorboard_metrics(folder: str) -> Series:
    """The scalars of the event files in ``folder``, read with TensorBoard's ``EventAccumulator``."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    except ImportError:
        return {}
    acc = EventAccumulator(folder, size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])
            if tag not in _SKIP}


def find_runs(log_dirs: Iterable[str]) -> dict[str, Series]:
    """Every run under ``log_dirs``: ``{label: series}``. A folder with both kinds of file gives one run
    (the CSV's values win for a metric in both)."""
    runs: dict[str, Series] = {}
    for top in log_dirs:
        if not os.path.isdir(top):
            raise FileNotFoundError(f"surge plot: no such folder: {top}")
        for folder, _, files in sorted(os.walk(top)):
            series: Series = {}
            if any(name.startswith("events.out.tfevents.") for name in files):
                series.update(read_tensorboard_metrics(folder))
            if "metrics.csv" in files:
                series.update(read_csv_metrics(os.path.join(folder, "metrics.csv")))
            if series:
                label = os.path.normpath(folder)
                runs[label] = {k: sorted(v) for k, v in series.items()}
    return runs


def _short_labels(labels: list[str]) -> dict[str, str]:
    """Drop the path prefix all labels share, so legends say "version_0", not a long path."""
    if len(labels) < 2:
        return {label: os.path.basename(label) or label for label in labels}
    common = os.path.commonpath(labels)
    return {label: os.path.relpath(label, common) if label != common else os.path.basename(label) for label in labels}


def plot_runs(runs: dict[str, Series], out_dir: str, dpi: int = 100) -> list[str]:
    """One PNG per metric in ``out_dir``, every run that logged it as one line; returns the paths."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("surge plot needs matplotlib: pip install matplotlib (or pip install 'surge[plot]')") from err
    matplotlib.use("Agg", force=True)  # files only, no display
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    labels = _short_labels(list(runs))
    metrics = sorted({m for series in runs.values() for m in series})
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run, series in runs.items():
            points = series.get(metric)
            if not points:
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=labels[run])
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = os.path.join(out_dir, re.sub(r"[^\w.\-]+", "_", metric) + ".png")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="surge plot", description="PNG charts of every logged metric over steps, "
                                     "from metrics.csv and TensorBoard event files; several runs overlaid.")
    parser.add_argument("log_dirs", nargs="+", help="run folders (or folders above them) to read")
    parser.add_argument("--out", default=None, help="where the PNGs go (default: <first log_dir>/plots)")
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.log_dirs)
    except FileNotFoundError as err:
        parser.exit(2, f"{err}\n")
    if not runs:
        parser.exit(1, f"surge plot: no metrics.csv or TensorBoard event files under {', '.join(args.log_dirs)}\n")
    out = args.out or os.path.join(args.log_dirs[0], "plots")
    paths = plot_runs(runs, out, dpi=args.dpi)
    print(f"surge plot: {len(paths)} chart(s) of {len(runs)} run(s) in {out}")
    return 0
