"""Peak memory of reading a large CSV data source: ``load_split`` on a generated file of ``--mb`` MB.

    python benchmarks/csv_memory.py [--mb 190] [--columns 64]

Writes a CSV of random features and a label column into a temporary directory, then runs
``kubetune.data.load_split`` on it in a fresh process and prints that process's peak resident memory
(ru_maxrss), which includes the interpreter and imports (measured alone and printed too).

Target (issue 9, point 13): a 190 MB CSV reads in well under 2 GB; results in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from raw_results import write_results

MEASURE = """
import resource
from kubetune.data import load_split
if {load}:
    split = load_split({{"source": "file://" + {path!r}, "labelColumn": "label"}})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def write_csv(path: Path, megabytes: int, columns: int) -> None:
    """Random rows in blocks until the file reaches ``megabytes``."""
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        out.write("label," + ",".join(f"f{i}" for i in range(columns)) + "\n")
        while out.tell() < megabytes * 1_000_000:
            block = rng.normal(size=(10_000, columns))
            labels = rng.integers(0, 10, size=len(block))
            np.savetxt(out, np.column_stack([labels, block]), fmt=["%d"] + ["%.6f"] * columns, delimiter=",")


def peak_mb(path: Path, *, load: bool) -> int:
    """Peak RSS in MB of a fresh interpreter that imports kubetune.data and (if ``load``) reads ``path``."""
    code = MEASURE.format(path=str(path), load=load)
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=190)
    parser.add_argument("--columns", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.csv"
        write_csv(path, args.mb, args.columns)
        size = path.stat().st_size / 1e6
        baseline, loaded = peak_mb(path, load=False), peak_mb(path, load=True)
    print(f"CSV {size:.0f} MB: peak RSS {loaded} MB ({loaded - baseline} MB above the {baseline} MB of imports)")
    write_results(
        "csv_memory",
        {"csv_mb": size, "columns": args.columns, "peak_rss_mb": loaded, "imports_peak_rss_mb": baseline},
    )


if __name__ == "__main__":
    main()
