"""log.csv, the per-step record of a run, kept in memory too for loss.png and metrics.json,
and the progress bar's short version of each step.

The harness (minigen.run) appends one row per step and reads the final averages from it. A
failing write (a full disk) is a WriteError naming log.csv, the bytes needed and the bytes free.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path

from minigen.files import WriteError, describe_write_error

FINAL_WINDOW = 50  # metrics.json reports scalars averaged over the last steps
COUNTERS = ("skipped",)  # running counts, not scalars to average or plot


class StepLog:
    """log.csv: one row per step (step, the loop's scalars, cumulative seconds).

    The rows are also kept in memory for loss.png and metrics.json. A resumed run keeps the
    rows of the steps before it and drops any written after its checkpoint. With path None
    (the ranks other than 0 of a data-parallel run) the rows are kept in memory only.
    """

    def __init__(self, path: Path | None, start_step: int):
        self.path, self.rows, self.fields = path, [], None
        self.failed = False
        if start_step > 0 and path is not None and path.is_file():
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.fields = reader.fieldnames
                self.rows = [self._parse(row) for row in reader
                             if row.get("step", "").isdigit() and int(row["step"]) < start_step]
        self.writer = None
        try:  # the ranks other than 0 of a data-parallel run write nowhere
            self.handle = open(path if path is not None else os.devnull, "w", newline="")
        except OSError as error:
            raise WriteError(describe_write_error(path, error, None)) from None
        if self.fields:
            self._start_writer()
            text = io.StringIO()
            csv.DictWriter(text, self.fields, extrasaction="ignore").writerows(self.rows)
            self._write(text.getvalue(), lambda: self.writer.writerows(self.rows))

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
            self._write(",".join(self.fields) + "\r\n", self.writer.writeheader)

    def _write(self, text: str, write) -> None:
        """Run `write` (which writes `text` into the file) and flush, so a killed run keeps
        its log up to the last step; a failure names the file and the bytes of `text`."""
        try:
            write()
            self.handle.flush()
        except OSError as error:
            self.failed = True
            raise WriteError(describe_write_error(self.path, error, len(text.encode()),
                                                  "; the rows before it are kept")) from None

    def append(self, step: int, scalars: dict, seconds: float) -> None:
        row = {"step": step, **{key: float(value) for key, value in scalars.items()},
               "seconds": round(seconds, 3)}
        if self.writer is None:
            self.fields = list(row)
            self._start_writer()
        text = io.StringIO()
        csv.DictWriter(text, self.fields, extrasaction="ignore").writerow(row)
        self._write(text.getvalue(), lambda: self.writer.writerow(row))
        self.rows.append(row)

    def loss_keys(self) -> list[str]:
        keys = [key for key in self.fields or [] if key not in ("step", "seconds", *COUNTERS)]
        return [key for key in keys if "loss" in key] or [key for key in keys if key != "lr"]

    def final(self, window: int = FINAL_WINDOW) -> dict:
        """Each scalar averaged over the last `window` steps."""
        last = self.rows[-window:]
        keys = [key for key in self.fields or [] if key not in ("step", "seconds", *COUNTERS)]
        means = {}
        for key in keys:
            values = [row[key] for row in last if math.isfinite(row.get(key, math.nan))]
            means[key] = math.fsum(values) / len(values) if values else None
        return means

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError as error:
            if not self.failed:  # else the failure was reported already; the rows are gone
                raise WriteError(describe_write_error(self.path, error, None)) from None


# The bar leaves out tqdm's steps/s (img/s in the postfix says the speed), so that at 80 columns
# the bar itself keeps its width beside the losses.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
BAR_VALUES = 3  # losses shown on the bar; every scalar is in log.csv


def bar_postfix(scalars: dict, images_per_second: float) -> str:
    """The progress bar's values: the losses (at most BAR_VALUES, 3 digits) and img/s."""
    keys = [key for key in scalars if "loss" in key] or list(scalars)
    shown = ", ".join(f"{key} {scalars[key]:.3g}" for key in keys[:BAR_VALUES])
    return f"{shown}, {images_per_second:.0f} img/s" if shown else f"{images_per_second:.0f} img/s"


def terminal_columns() -> int | None:
    """The width stderr's terminal reports, as the bar can use it: 0 when it reports no width
    or no height (a pseudo-terminal never sized does), where tqdm would show nothing at all;
    None when stderr is no terminal."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return size.columns if size.lines > 0 else 0
