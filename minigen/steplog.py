"""log.csv, the per-step record of a run, kept in memory too for loss.png and metrics.json.

The harness (minigen.run) appends one row per step and reads the final averages from it.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

FINAL_WINDOW = 50  # metrics.json reports scalars averaged over the last steps


class StepLog:
    """log.csv: one row per step (step, the loop's scalars, cumulative seconds).

    The rows are also kept in memory for loss.png and metrics.json. A resumed run keeps the
    rows of the steps before it and drops any written after its checkpoint. With path None
    (the ranks other than 0 of a data-parallel run) the rows are kept in memory only.
    """

    def __init__(self, path: Path | None, start_step: int):
        self.path, self.rows, self.fields = path, [], None
        if start_step > 0 and path is not None and path.is_file():
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.fields = reader.fieldnames
                self.rows = [self._parse(row) for row in reader
                             if row.get("step", "").isdigit() and int(row["step"]) < start_step]
        self.handle = open(path if path is not None else os.devnull, "w", newline="")
        self.writer = None
        if self.fields:
            self._start_writer()
            self.writer.writerows(self.rows)
            self.handle.flush()

    @staticmethod
    def _parse(row: dict) -> dict:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = int(value) if key == "step" else float(value)
            except (TypeError, ValueError):
                parsed[key] = float("nan")
        return parsed

    def _start_writer(self) -> None:
        self.writer = csv.DictWriter(self.handle, self.fields, extrasaction="ignore")
        if self.handle.tell() == 0:
            self.writer.writeheader()

    def append(self, step: int, scalars: dict, seconds: float) -> None:
        row = {"step": step, **{key: float(value) for key, value in scalars.items()},
               "seconds": round(seconds, 3)}
        if self.writer is None:
            self.fields = list(row)
            self._start_writer()
        self.writer.writerow(row)
        self.handle.flush()  # a killed run keeps its log up to the last step
        self.rows.append(row)

    def loss_keys(self) -> list[str]:
        keys = [key for key in self.fields or [] if key not in ("step", "seconds")]
        return [key for key in keys if "loss" in key] or [key for key in keys if key != "lr"]

    def final(self, window: int = FINAL_WINDOW) -> dict:
        """Each scalar averaged over the last `window` steps."""
        last = self.rows[-window:]
        keys = [key for key in self.fields or [] if key not in ("step", "seconds")]
        means = {}
        for key in keys:
            values = [row[key] for row in last if math.isfinite(row.get(key, math.nan))]
            means[key] = math.fsum(values) / len(values) if values else None
        return means

    def close(self) -> None:
        self.handle.close()
