"""Does a mutated child that inherits its parent's weights reach the parent's accuracy sooner?

For each seed: train a parent (a batch-normed Conv1d net on MNIST-1D) for ``--epochs``, then for each
mutation of one choice (its second block widened; its second block's activation changed) train the
child twice for up to ``--epochs``, from its own initialisation and from the parent's weights
(:func:`kubetune.inheritance.inherit_weights`), with the same seed and data order. It reports the
epochs and training seconds each child took to first reach the parent's final validation accuracy
(``null`` where it never did), and the child's final accuracy. One CPU thread by default.

Run: ``python benchmarks/weight_inheritance.py [--seeds 3] [--epochs 12] [--threads 1] [--data SOURCE]``
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from raw_results import write_results

from kubetune.data import SplitData, load_split
from kubetune.inheritance import inherit_weights
from kubetune.nas import build_model
from kubetune.train import train_model

PARENT = {"blocks": [{"kind": "conv", "width": 32, "kernelSize": 5, "norm": "batch"}] * 2}
MUTATIONS = {"widen block 1 (32 -> 48)": ("width", 48), "block 1 activation relu -> gelu": ("activation", "gelu")}
HYPERPARAMETERS = {"lr": 3e-3, "optimizer": "adam", "batchSize": 128}


def mutate(architecture: dict, field: str, value) -> dict:
    """The architecture with one field of its second block changed."""
    child = copy.deepcopy(architecture)
    child["blocks"][1] = {**child["blocks"][1], field: value}
    return child


def train(architecture: dict, split: SplitData, *, epochs: int, seed: int, parent_state: dict | None = None) -> dict:
    """Train from scratch, or from ``parent_state``; the history and, when inherited, the copy summary."""
    model = build_model(architecture, input_shape=split.input_shape, num_classes=split.num_classes, seed=seed)
    summary = None if parent_state is None else inherit_weights(parent_state, model).as_dict()
    result = train_model(model, split, epochs=epochs, hyperparameters=HYPERPARAMETERS, seed=seed)
    assert result.status == "complete", result.reason
    curve = [(row["val_accuracy"], row["seconds"]) for row in result.history]
    return {"model": model, "curve": curve, "summary": summary}


def time_to_reach(curve: list[tuple[float, float]], target: float) -> tuple[int | None, float | None]:
    """Epochs and training seconds until the validation accuracy first reached ``target``."""
    seconds = 0.0
    for epoch, (accuracy, took) in enumerate(curve, start=1):
        seconds += took
        if accuracy >= target:
            return epoch, seconds
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="builtin:mnist1d", help="a data source holding MNIST-1D")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split({"source": args.data})
    runs = []
    for seed in range(args.seeds):
        parent = train(PARENT, split, epochs=args.epochs, seed=seed)
        target = parent["curve"][-1][0]
        state = {name: tensor.detach().cpu() for name, tensor in parent["model"].state_dict().items()}
        for mutation, (field, value) in MUTATIONS.items():
            child = mutate(PARENT, field, value)
            row = {"seed": seed, "mutation": mutation, "parent_val_accuracy": target}
            for how, inherited in (("scratch", None), ("inherited", state)):
                trained = train(child, split, epochs=args.epochs, seed=seed + 1000, parent_state=inherited)
                epochs, seconds = time_to_reach(trained["curve"], target)
                row[how] = {
                    "epochs_to_parent": epochs,
                    "seconds_to_parent": seconds,
                    "first_epoch_val_accuracy": trained["curve"][0][0],
                    "final_val_accuracy": trained["curve"][-1][0],
                    "val_accuracy": [accuracy for accuracy, _ in trained["curve"]],
                    "copy_summary": trained["summary"],
                }
            runs.append(row)
            print(
                f"seed {seed} {mutation:32s} parent {target:.3f} | epochs to reach it: scratch "
                f"{row['scratch']['epochs_to_parent']}, inherited {row['inherited']['epochs_to_parent']} | "
                f"epoch-1 accuracy: scratch {row['scratch']['first_epoch_val_accuracy']:.3f}, "
                f"inherited {row['inherited']['first_epoch_val_accuracy']:.3f}"
            )
    for mutation in MUTATIONS:
        for how in ("scratch", "inherited"):
            rows = [run[how] for run in runs if run["mutation"] == mutation]
            reached = [r["epochs_to_parent"] for r in rows if r["epochs_to_parent"] is not None]
            median = statistics.median(reached) if reached else None
            print(
                f"{mutation:32s} {how:9s}: reached the parent in {len(reached)}/{len(rows)} seeds, median epochs {median}"
            )
    write_results(
        "weight_inheritance",
        {
            "data": args.data,
            "training_samples": len(split.y_train),
            "epochs": args.epochs,
            "threads": args.threads,
            "parent": PARENT,
            "hyperparameters": HYPERPARAMETERS,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
