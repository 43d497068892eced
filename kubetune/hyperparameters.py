"""The hyperparameters the built-in trainer understands, with their defaults.

Kept apart from the trainer so the spec can validate names without importing torch.
"""

HYPERPARAMETERS = {
    "lr": 1e-3,
    "optimizer": "adam",
    "batchSize": 64,
    "weightDecay": 0.0,
    "momentum": 0.9,
    "labelSmoothing": 0.0,
}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
