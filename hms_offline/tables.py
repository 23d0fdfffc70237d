"""Reading the competition's CSV files with their required columns checked."""

from pathlib import Path

import pandas as pd


def read_csv_with_columns(path: Path, required, what: str) -> pd.DataFrame:
    """`path` read by pandas; a missing file or column is an error naming the file and the
    column(s), and `what` the file is for."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    frame = pd.read_csv(path)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"{what} needs {', '.join(required)}"
        )
    return frame
