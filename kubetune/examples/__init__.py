"""The example experiments, shipped inside the package so images and jobs can use them.

``examples/*.yaml`` at the top of the repository link here.
"""

from pathlib import Path

from kubetune.spec import Experiment, load_experiment

__all__ = ["EXAMPLES", "default_experiment"]

EXAMPLES = Path(__file__).resolve().parent


def default_experiment() -> Experiment:
    """The digits example: the quick demo, and the pipeline registered for the Kubeflow UI."""
    return load_experiment(EXAMPLES / "digits.yaml")
