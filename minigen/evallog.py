"""Quality measured during training (`minigen train ... --eval-every K`): eval.csv and eval.png.

Every K steps the harness (minigen.run) draws samples from the loop, which uses its EMA weights
where it keeps them, and measures them with minigen.metrics.evaluate; EvalLog keeps one row per
measurement (the scalar measures: fid, kid, precision, recall, memorization, ... and their
floors) in eval.csv, as the step log keeps log.csv, and draws their curves into eval.png.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from minigen.steplog import StepLog

EVAL_LOG, EVAL_PICTURE = "eval.csv", "eval.png"
EVAL_FILES = (EVAL_LOG, EVAL_PICTURE)
NOT_CURVES = ("n", "num_modes", "classifier_accuracy")  # constants of the run, not curves


def scalar_measures(measures: dict) -> dict:
    """The plain numbers of a metrics.evaluate result (no histograms, no notes)."""
    return {key: float(value) for key, value in measures.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            and key not in NOT_CURVES}


class EvalLog:
    """eval.csv and eval.png of a run in `out`, continued from `start_step` on resume."""

    def __init__(self, out: Path, start_step: int, measure: Callable[[], dict | None],
                 title: str = ""):
        self.out, self.measure, self.title = Path(out), measure, title
        # A row's step is the number of steps done when it was measured, so a run resumed at
        # step S keeps the rows up to and including S (log.csv counts from 0 and keeps < S).
        self.log = StepLog(self.out / EVAL_LOG, start_step + 1 if start_step else 0)

    def record(self, step: int, seconds: float) -> str:
        """Measure now (after `step` steps), append the row, redraw the picture; returns a
        one-line summary for the progress messages."""
        measures = self.measure()
        if not measures:
            return f"step {step}: nothing to measure"
        scalars = scalar_measures(measures)
        self.log.append(step, scalars, seconds)
        save_measure_curves(self.log.rows, self.out / EVAL_PICTURE, self.title)
        shown = [key for key in scalars if not key.endswith("_floor")][:5]
        return f"eval at step {step}: " + "  ".join(f"{key} {scalars[key]:.4g}" for key in shown)

    def close(self) -> None:
        self.log.close()


def save_measure_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """One panel per measure against the step; a measure's floor (key_floor) dashed beside it."""
    from minigen.viz import _figure

    keys = [key for key in rows[0] if key not in ("step", "seconds") and not key.endswith("_floor")]
    columns = min(len(keys), 4)
    figure = _figure(3.2 * columns, 2.6 * math.ceil(len(keys) / columns), 100)
    steps = np.array([row["step"] for row in rows])
    for index, key in enumerate(keys):
        axes = figure.add_subplot(math.ceil(len(keys) / columns), columns, index + 1)
        axes.plot(steps, [row.get(key, math.nan) for row in rows], "o-", color="C0",
                  markersize=3, label=key)
        if f"{key}_floor" in rows[0]:
            axes.plot(steps, [row.get(f"{key}_floor", math.nan) for row in rows], "--",
                      color="0.5", label="floor")
            axes.legend(fontsize=7)
        axes.set_title(key, fontsize=9)
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
