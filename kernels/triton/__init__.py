"""Triton kernels of the model's swappable ops, each in the file named as its torch reference in
kernels/reference/; ops.py gathers them into a ModelOps."""
