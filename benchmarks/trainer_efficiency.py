"""How much does kubetune's trainer cost over a plain, hand-written PyTorch loop?

Same model (a 3-block Conv1d net on MNIST-1D), same data, batch size, optimizer and epochs, each
epoch followed by a validation pass in both; one CPU thread for both, or one GPU with ``--device
cuda`` (both loops then use mixed precision, as the trainer does on CUDA). The two are run in
alternating rounds so that machine noise hits both alike, and the median epoch time is compared.
The target is a ratio of at most 1.2.

Run: ``python benchmarks/trainer_efficiency.py [--epochs 3] [--rounds 3] [--device cuda] [--data SOURCE]``
(``--data`` takes any data source, e.g. ``file:///path/mnist1d.npz`` where the mnist1d package is missing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from raw_results import write_results
from torch import nn

from kubetune.data import load_split
from kubetune.nas import build_model
from kubetune.train import train_model

ARCHITECTURE = {"blocks": [{"kind": "conv", "width": 64, "kernelSize": 5, "norm": "batch"}] * 3}
BATCH_SIZE = 64
LR = 1e-3


def plain_loop(model: nn.Module, split, *, epochs: int, seed: int, device: str) -> list[float]:
    """The loop one would write by hand: in-memory tensors, random index batches, Adam, no_grad validation."""
    torch.manual_seed(seed)
    amp = device.startswith("cuda")
    model.to(device)
    x, y = torch.from_numpy(split.x_train).to(device), torch.from_numpy(split.y_train).to(device)
    x_val, y_val = torch.from_numpy(split.x_val).to(device), torch.from_numpy(split.y_val).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        permutation = torch.randperm(len(y), device=device)
        for i in range(0, len(y), BATCH_SIZE):
            index = permutation[i : i + BATCH_SIZE]
            with torch.autocast("cuda", enabled=amp):
                loss = loss_fn(model(x[index]), y[index])
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", enabled=amp):
            correct = sum(
                (model(x_val[i : i + 512]).argmax(1) == y_val[i : i + 512]).sum().item()
                for i in range(0, len(y_val), 512)
            )
        assert correct > 0
        seconds.append(time.perf_counter() - start)
    return seconds


def kubetune_loop(model: nn.Module, split, *, epochs: int, seed: int, device: str) -> list[float]:
    result = train_model(
        model,
        split,
        epochs=epochs,
        seed=seed,
        device=device,
        hyperparameters={"lr": LR, "optimizer": "adam", "batchSize": BATCH_SIZE},
    )
    assert result.status == "complete", result.reason
    return [row["seconds"] for row in result.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", default="builtin:mnist1d", help="a data source holding MNIST-1D")
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split({"source": args.data})
    times: dict[str, list[float]] = {"plain": [], "kubetune": []}
    for round_ in range(args.rounds):
        for name, loop in (("plain", plain_loop), ("kubetune", kubetune_loop)):
            model = build_model(ARCHITECTURE, input_shape=split.input_shape, num_classes=split.num_classes)
            times[name] += loop(model, split, epochs=args.epochs, seed=round_, device=args.device)
    plain, ours = statistics.median(times["plain"]), statistics.median(times["kubetune"])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "1 CPU thread"
    print(
        f"MNIST-1D, {len(split.y_train)} training samples, batch {BATCH_SIZE}, {where}, "
        f"{args.rounds} rounds x {args.epochs} epochs each"
    )
    print(f"plain PyTorch loop : {plain:.3f} s/epoch (median)")
    print(f"kubetune train_model: {ours:.3f} s/epoch (median)")
    print(f"ratio kubetune/plain: {ours / plain:.3f} (target <= 1.2)")
    write_results(
        f"trainer_efficiency-{'cuda' if args.device.startswith('cuda') else 'cpu'}",
        {
            "where": where,
            "device": args.device,
            "data": args.data,
            "training_samples": len(split.y_train),
            "batch_size": BATCH_SIZE,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "epoch_seconds": times,
            "median_epoch_seconds": {"plain": plain, "kubetune": ours},
            "ratio": ours / plain,
        },
    )


if __name__ == "__main__":
    main()
