"""KFP pipelines built from kubetune components: one search segment, and its compile entry point."""

from kubetune.pipelines.search import ClusterSettings, build_pipeline, compile_pipeline

__all__ = ["ClusterSettings", "build_pipeline", "compile_pipeline"]
