"""Benchmarks: peak FLOP/s, the throughput ladder against a PyTorch baseline, depth and remat."""
