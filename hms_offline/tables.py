"""Reading the competition's CSV files with their required columns checked."""

import re
from pathlib import Path

import pandas as pd

# An id cell: an integer, or an integer written as a float by a spreadsheet or pandas ("12.0").
_ID_PATTERN = re.compile(r"\s*(-?\d+)(?:\.0*)?\s*")


def read_csv_with_columns(path: Path, required, what: str, text_columns=()) -> pd.DataFrame:
    """`path` read by pandas; a missing file, an unparsable file or a missing column is an
    error naming the file and the column(s), and `what` the file is for.

    `text_columns` are read as text, untouched (ids: one blank cell would otherwise turn a
    whole integer column into floats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={column: "string" for column in text_columns})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a CSV file ({what}): {error}") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"{what} needs {', '.join(required)}"
        )
    return frame


def csv_line(row_position: int) -> int:
    """The file line of a data row (line 1 is the header)."""
    return row_position + 2


def parse_ids(cells: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Text id cells -> (nullable Int64 ids, {row position: why that cell is not an id})."""
    values, problems = [], {}
    for position, cell in enumerate(cells.fillna("")):
        match = _ID_PATTERN.fullmatch(cell)
        if match:
            values.append(int(match.group(1)))
        else:
            values.append(None)
            problems[position] = "blank" if not cell.strip() else f"{cell!r} is not an integer id"
    return pd.Series(values, index=cells.index, dtype="Int64"), problems
