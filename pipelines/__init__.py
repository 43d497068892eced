"""KFP pipelines built from kubetune components: one search segment, the targets it is built for, and its
compile entry point."""

from kubetune.pipelines.search import build_pipeline, compile_pipeline
from kubetune.pipelines.targets import EMBEDDED, InCluster, Target

__all__ = ["EMBEDDED", "InCluster", "Target", "build_pipeline", "compile_pipeline"]
