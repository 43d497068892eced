"""Paths into the repository, so no test depends on the directory pytest was started from."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DIGITS = EXAMPLES / "digits.yaml"
CELL_EXAMPLE = EXAMPLES / "mnist1d-cell.yaml"
