import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parents[1]
HMS_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "hms-sample"


@pytest.fixture(scope="session")
def hms_sample() -> Path:
    """The real public sample of the competition files, beside the repo in ../shared."""
    if not (HMS_SAMPLE / "test.csv").exists():
        pytest.skip(f"real competition sample not found at {HMS_SAMPLE}")
    return HMS_SAMPLE
