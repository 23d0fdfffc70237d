"""What Kaggle would refuse in a written submission.csv, checked on the file itself with
the csv module, independently of hms_offline (which wrote it)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .common import BundleError

SUM_TOLERANCE = 1e-6  # a copy of hms_offline.serving.submission.SUM_TOLERANCE (that module needs numpy)


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise BundleError(f"{path} is empty", exit_code=1)
    return rows[0], rows[1:]


def row_problem(row: list[str], width: int) -> str | None:
    """Why Kaggle would refuse this submission row, or None."""
    if len(row) != width:
        return f"{len(row)} fields, expected {width}"
    try:
        values = [float(value) for value in row[1:]]
    except ValueError:
        return f"not a number among {row[1:]}"
    if not all(math.isfinite(value) for value in values):
        return f"not finite: {row[1:]}"
    if not all(0 <= value <= 1 for value in values):
        return f"a probability outside [0, 1]: {row[1:]}"
    total = math.fsum(values)
    if abs(total - 1) > SUM_TOLERANCE:
        return f"sums to {total!r}, not 1 (within {SUM_TOLERANCE:g})"
    return None


def submission_problems(submission: Path, sample: Path) -> list[str]:
    """Everything that would make Kaggle refuse the submission: columns other than
    sample_submission.csv's, rows missing, extra or in another order, values not finite,
    outside [0, 1] or not summing to 1."""
    header, rows = read_csv_rows(submission)
    expected_header, expected_rows = read_csv_rows(sample)
    problems = []
    if header != expected_header:
        problems.append(f"columns {header}, but sample_submission.csv has {expected_header}")
    ids, expected_ids = [row[0] for row in rows], [row[0] for row in expected_rows]
    if ids != expected_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, expected_ids)) if a != b), min(len(ids), len(expected_ids)))
        problems.append(f"{len(ids)} rows where sample_submission.csv has {len(expected_ids)}; the ids first differ "
                        f"at data row {first + 1}")
    problems += [f"line {line}: {problem}" for line, row in enumerate(rows, start=2)
                 if (problem := row_problem(row, len(expected_header)))]
    return problems


def check_submission(submission: Path, sample: Path) -> int:
    """The number of rows of a valid submission; a BundleError listing what is wrong otherwise."""
    if not submission.is_file():
        raise BundleError(f"the kernel wrote no {submission}", exit_code=1)
    problems = submission_problems(submission, sample)
    if problems:
        listed = "\n  ".join(problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
        raise BundleError(f"the submission {submission} would be refused by Kaggle:\n  {listed}", exit_code=1)
    return len(read_csv_rows(submission)[1])
