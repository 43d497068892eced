"""Where a benchmark keeps its raw numbers: ``benchmarks/results/<name>.json``, beside the table it prints.

The table in benchmarks/README.md is written from these files by hand; the JSON keeps every sample, so a
reader can recompute a percentile or a spread instead of trusting a summary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: Any, *, folder: Path = RESULTS) -> Path:
    """Write ``results`` with when and where they were measured; returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    document = {
        "benchmark": name,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)),
        },
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"raw results: {path}")
    return path
