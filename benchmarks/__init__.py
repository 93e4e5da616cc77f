"""Benchmarks of qasr: throughput, and WER of the demo model on the committed held-out set."""
