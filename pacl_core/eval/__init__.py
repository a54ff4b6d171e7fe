"""The standard segmentation benchmarks: datasets and the evaluation loop."""
