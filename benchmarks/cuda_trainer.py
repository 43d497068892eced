"""The trainer's CUDA path, on a machine with a GPU: mixed precision learns, and a real out-of-memory fails the trial.

    python benchmarks/cuda_trainer.py [--data builtin:mnist1d] [--epochs 15]

Trains the 3-block Conv1d net of benchmarks/trainer_efficiency.py with the trainer's defaults on
CUDA (autocast + gradient scaling), prints epoch time and validation accuracy next to the same run
on the CPU, then caps this process's GPU memory and trains a net too wide for the cap: the trial must
come back failed with an out-of-memory reason, not crash. CI machines have no GPU, so this is a script
to run where one is lent, not a test.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from raw_results import write_results

from kubetune.data import load_split
from kubetune.nas import build_model
from kubetune.train import train_model

ARCHITECTURE = {"blocks": [{"kind": "conv", "width": 64, "kernelSize": 5, "norm": "batch"}] * 3}
TOO_WIDE = {"blocks": [{"kind": "conv", "width": 2048, "kernelSize": 7, "norm": "batch"}] * 3}
SETTINGS = {"lr": 1e-3, "optimizer": "adam", "batchSize": 64}


def run(split, device: str, epochs: int) -> tuple[list[float], float, str]:
    """Each epoch's seconds, the last validation accuracy, and where the weights ended up."""
    model = build_model(ARCHITECTURE, input_shape=split.input_shape, num_classes=split.num_classes, seed=0)
    result = train_model(model, split, epochs=epochs, seed=0, device=device, hyperparameters=SETTINGS)
    assert result.status == "complete", result.reason
    seconds = [row["seconds"] for row in result.history]
    return seconds, result.history[-1]["val_accuracy"], str(next(model.parameters()).device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:mnist1d")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run this on a machine with a GPU")
    split = load_split({"source": args.data})
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {len(split.y_train)} training samples, "
        f"{args.epochs} epochs, batch {SETTINGS['batchSize']}"
    )
    runs = {}
    for device in ("cuda", "cpu"):
        seconds, accuracy, placed = run(split, device, args.epochs)
        median = statistics.median(seconds)
        print(f"  {device:<4}: {median:.3f} s/epoch (median), val accuracy {accuracy:.4f}, weights on {placed}")
        runs[device] = {"epoch_seconds": seconds, "val_accuracy": accuracy, "weights_on": placed}

    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(64 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    model = build_model(TOO_WIDE, input_shape=split.input_shape, num_classes=split.num_classes, seed=0)
    result = train_model(model, split, epochs=1, seed=0, device="cuda", hyperparameters={**SETTINGS, "batchSize": 512})
    print(f"  a net too wide for 64 MiB of GPU memory: {result.status} ({result.reason})")
    write_results(
        "cuda_trainer",
        {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "data": args.data,
            "epochs": args.epochs,
            "runs": runs,
            "too_wide_for_64_mib": {"status": result.status, "reason": result.reason},
        },
    )
    assert result.status == "failed" and result.reason.startswith("out of memory"), result


if __name__ == "__main__":
    main()
