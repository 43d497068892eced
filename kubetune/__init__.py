"""kubetune: hyperparameter and architecture search on Kubeflow Pipelines."""

__version__ = "0.1.0"
