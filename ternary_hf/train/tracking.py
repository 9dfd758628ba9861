"""Where a run's metrics go: Accelerate trackers (a CSV file always, TensorBoard on request).

:class:`CSVTracker` is an Accelerate ``GeneralTracker``, so the loop logs once with
``accelerator.log(...)`` and every tracker gets the row. Training rows go to ``metrics.csv``;
evaluation rows carry other columns, so they go to ``evals.csv`` (``log_kwargs={"csv": {"file":
"evals.csv"}}``). A resumed run first drops the rows logged after its checkpoint
(:meth:`CSVTracker.drop_after`): the killed session logged steps it never checkpointed, the resumed
run redoes them, and each step must appear once.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from ..errors import MissingDependencyError
from ..utils.io import atomic_write_text

__all__ = ["METRICS_FILES", "RUN_NAME", "CSVTracker", "discard_logs", "make_trackers"]

#: the CSV files a run writes in its work dir
METRICS_FILES = ("metrics.csv", "evals.csv")
#: the run name of the TensorBoard logs (their folder in the work dir)
RUN_NAME = "distill"


def _read_csv(path: Path) -> tuple[list[str] | None, list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return (list(reader.fieldnames) if reader.fieldnames else None), rows


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Rewrite a metrics CSV whole, atomically, so a kill mid-write loses nothing."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


class CSVTracker(GeneralTracker):
    """Rows of metrics appended to CSV files in ``work_dir`` (``metrics.csv`` unless ``file=`` says otherwise).

    A column that appears later (the bank loss, once the bank has entries) is added to the header and
    earlier rows are rewritten with it empty, so every value stays under its header.
    """

    name = "csv"
    requires_logging_directory = False

    def __init__(self, work_dir: str | Path):
        super().__init__()
        self.work_dir = Path(work_dir)
        self._fields: dict[str, list[str] | None] = {}  # each file's header, read from disk once per run

    @property
    def tracker(self) -> CSVTracker:
        return self

    @on_main_process
    def drop_after(self, step: int) -> None:
        """Forget rows logged after ``step`` (the checkpoint a run resumes from)."""
        for file in METRICS_FILES:
            path = self.work_dir / file
            if not path.is_file():
                continue
            fields, rows = _read_csv(path)
            kept = [row for row in rows if int(float(row["step"])) <= step]
            if fields and len(kept) < len(rows):
                _write_csv(path, fields, kept)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, file: str = "metrics.csv", **kwargs: Any) -> None:
        row = {"step": step, **values} if step is not None else dict(values)
        path = self.work_dir / file
        if file not in self._fields:
            self._fields[file] = _read_csv(path)[0] if path.is_file() else None
        fields = self._fields[file]
        if fields is not None and not set(row) <= set(fields):
            fields = fields + [name for name in row if name not in fields]
            _write_csv(path, fields, _read_csv(path)[1])
        new_file = fields is None
        fields = self._fields[file] = fields or list(row)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def make_trackers(report_to: str, work_dir: Path) -> list[Any]:
    """The ``log_with`` trackers of a run: the CSV files, plus Accelerate's TensorBoard tracker if asked.

    Raises:
        MissingDependencyError: ``report_to="tensorboard"`` without the tensorboard package.
    """
    trackers: list[Any] = [CSVTracker(work_dir)]
    if report_to == "tensorboard":
        if not _tensorboard_available():
            raise MissingDependencyError("report_to='tensorboard' needs the tensorboard package: pip install "
                                         "tensorboard (or use report_to='csv', which writes metrics.csv)")
        trackers.append("tensorboard")
    return trackers


def discard_logs(work_dir: Path) -> None:
    """Remove a run's metrics (CSV files and TensorBoard logs) from ``work_dir``: a fresh start."""
    for file in METRICS_FILES:
        (Path(work_dir) / file).unlink(missing_ok=True)
    shutil.rmtree(Path(work_dir) / RUN_NAME, ignore_errors=True)
