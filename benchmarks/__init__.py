"""The benchmark suite of siliconflow-video: ``python -m benchmarks`` (see README.md)."""
