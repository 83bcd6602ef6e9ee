"""minigen.kernels: array-in, array-out compute kernels."""
