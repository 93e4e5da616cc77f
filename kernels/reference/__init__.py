"""Plain-torch implementations of the model's swappable ops: the CPU path, and the reference every Triton kernel in
kernels/triton/ (same file names) is tested against."""
