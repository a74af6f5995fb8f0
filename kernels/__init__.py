"""Triton kernels with pure-torch references; the kernels arrive with the kernels issue."""
