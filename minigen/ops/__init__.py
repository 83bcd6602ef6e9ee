"""The differentiable ops, one file per family (elementwise, reduce, shape, matmul,
activations, losses, conv, pool, norm). Each op: forward on arrays, backward in Tensor ops."""
