"""llm-perf-opt: stage profiler for LLM and vision-language inference, recorded in MLflow."""

__version__ = "0.1.0"
