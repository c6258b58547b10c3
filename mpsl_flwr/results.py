"""Run outputs: ``<output-dir>/<run-name>/`` with config, history, summary and a plot.

Each epoch (or round) is appended to ``history.jsonl`` and flushed to disk at once, and
``summary.json`` is rewritten atomically after every epoch with ``status: running``, so
a crash loses at most the epoch in progress. A new run never reuses a directory: a
taken name gets a ``-2``, ``-3`` ... suffix. A resumed run writes nothing into the run
directory until its checkpoint has been accepted (:meth:`RunRecorder.restore`), so a
refused resume leaves the run it names as it was.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from mpsl_flwr.config import RunConfig
from mpsl_flwr.project import project_path
from mpsl_flwr.records import EpochRecord
from mpsl_flwr.run_lock import RunLock

log = logging.getLogger("mpsl_flwr")

SUMMARY = "summary.json"
HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
PLOT = "history.png"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def default_run_name(cfg: RunConfig) -> str:
    """``<strategy>-<dataset>-<size>-s<seed>-<time>``: the name of a run without ``run-name``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.strategy}-{cfg.dataset}-{cfg.model_size}-s{cfg.seed}-{stamp}"


def run_name_candidates(name: str) -> Iterator[str]:
    """``name``, ``name-2``, ``name-3`` ...: the names a new run tries, in order."""
    yield name
    for k in itertools.count(2):
        yield f"{name}-{k}"


def new_run_dir(root: Path, name: str) -> Path:
    """Create and return a fresh directory ``root/name`` (suffixed if taken)."""
    root.mkdir(parents=True, exist_ok=True)
    return next(root / c for c in run_name_candidates(name) if _made(root / c))


def _made(path: Path) -> bool:
    """Create ``path``; False if it exists already (atomic: two runs never share one)."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


class RunRecorder:
    """Writes a run's files as it goes.

    Where and under which name comes from ``cfg.output``; the whole ``cfg`` is written
    to ``config.json`` and the summary, and names the run when ``run-name`` is empty.
    ``headline`` is the test metric the plot shows (the task's), ``chance`` its value for
    uniform guessing (a line on the plot, and ``chance`` in the summary).
    """

    def __init__(
        self,
        cfg: RunConfig,
        num_clients: int | None = None,
        headline: str | None = None,
        chance: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.headline = headline
        self.chance = chance
        out = cfg.output
        name = out.run_name or default_run_name(cfg)
        root = project_path(out.output_dir).resolve()
        if out.resume:
            self.dir = root / name
            if not self.dir.is_dir():
                raise FileNotFoundError(
                    f"resume=true but run directory {self.dir} does not exist; check "
                    "'output-dir' and 'run-name'."
                )
        else:
            self.dir = new_run_dir(root, name)
        self.lock = RunLock.acquire(self.dir)
        self.history: list[dict[str, Any]] = []
        self.t0 = time.time()
        self.summary: dict[str, Any] = {
            "status": "running",
            "strategy": cfg.strategy,
            "dataset": cfg.dataset,
            "model-size": cfg.model_size,
            "num-clients": num_clients,
            "seed": cfg.seed,
            "run-dir": str(self.dir),
            "config": cfg.to_mapping(),
        }
        # A resumed run's files belong to the run it continues until its checkpoint is
        # accepted; a new run's are its own from the start.
        self.writing = not out.resume
        if self.writing:
            try:
                self._write_config()
            except BaseException:
                self.lock.release()
                raise
        log.info("Writing results to %s", self.dir)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Mark the run failed on an error; let go of the run directory in any case."""
        if exc is not None:
            self.fail(exc)
        self.lock.release()

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Continue from a checkpoint's history: rows after it are dropped from the files.

        This is where a resumed run takes over its directory (config included)."""
        self.writing = True
        self._write_config()
        self.history = [EpochRecord.from_row(row).to_row() for row in history]
        if self.history:
            self.t0 = time.time() - float(self.history[-1]["wall-time-s"] or 0.0)
        text = "".join(json.dumps(row) + "\n" for row in self.history)
        _atomic_write(self.dir / HISTORY_JSONL, text)
        self._write_csv()
        self._write_summary()

    def update(self, **fields: Any) -> None:
        """Add top-level fields to the summary (e.g. parameter counts)."""
        self.summary.update(fields)
        self._write_summary()

    def log_epoch(self, record: EpochRecord) -> None:
        """Append one epoch/round of metrics; everything is on disk when this returns."""
        row = record.replace(wall_time_s=round(time.time() - self.t0, 3)).to_row()
        self.history.append(row)
        with (self.dir / HISTORY_JSONL).open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._write_csv()
        self._write_summary()

    def finish(self, final_metrics: dict[str, Any]) -> Path:
        """Mark the run completed, write final metrics and the plot; return summary path."""
        self.summary.update(
            status="completed",
            final=final_metrics,
            wall_time_s=round(time.time() - self.t0, 3),
        )
        self._write_summary()
        try:
            plot_history(self.history, self.dir / PLOT, self.dir.name, self.headline, self.chance)
        except Exception as err:
            log.warning("Could not draw %s: %s", PLOT, err)
        self.lock.release()
        return self.dir / SUMMARY

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (the history written so far stays) and let go of the run
        directory; a resume that was refused writes nothing."""
        self.summary.update(status="failed", error=f"{type(error).__name__}: {error}")
        try:
            self._write_summary()
        except OSError as err:  # a full disk must not hide the error that ended the run
            log.error("Could not mark %s failed: %s", self.dir / SUMMARY, err)
        finally:
            self.lock.release()

    def _write_config(self) -> None:
        _atomic_write(self.dir / "config.json", json.dumps(self.cfg.to_mapping(), indent=2))
        self._write_summary()

    def _write_summary(self) -> None:
        self.summary["history"] = self.history
        if self.writing:
            _atomic_write(self.dir / SUMMARY, json.dumps(self.summary, indent=2))

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        tmp = self.dir / (HISTORY_CSV + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.dir / HISTORY_CSV)


def plot_history(
    history: list[dict[str, Any]],
    path: Path,
    title: str = "",
    metric: str | None = None,
    chance: float | None = None,
) -> None:
    """Test ``metric`` (beside train accuracy where the history has it, over a dashed
    chance line) and train loss against epoch, as a PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if metric is not None and history[0].get(metric) is not None:
        ax1.plot(epochs, [r[metric] for r in history], marker="o", label=f"test ({metric})")
        if history[0].get("train-accuracy") is not None:
            train = [r["train-accuracy"] for r in history]
            ax1.plot(epochs, train, marker="s", linestyle="--", label="train accuracy")
        draw_chance(ax1, chance)
        ax1.set_ylabel(metric)
        ax1.legend()
    ax2.plot(epochs, [r.get("train-loss", float("nan")) for r in history], marker="o", color="C1")
    ax2.set_ylabel("train-loss")
    for ax in (ax1, ax2):
        epoch_axis(ax, "epoch")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_chance(ax: Any, chance: float | None) -> None:
    """A dashed grey line at the metric's value for uniform guessing."""
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3f})")


def epoch_axis(ax: Any, label: str) -> None:
    """Whole-number ticks on an epoch/round x axis, and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def format_table(history: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of the history (for the console and READMEs).

    A column that is null (or absent) in every row is left out: it was not measured.
    """
    if not history:
        return "(no epochs recorded)"
    if columns is None:
        columns = [k for k in history[0] if not k.startswith("config")]
    columns = [c for c in columns if any(row.get(c) is not None for row in history)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in history:
        cells = []
        for c in columns:
            v = row.get(c)
            v = "" if v is None else v
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
