"""minigen.nn.functional: the same ops as minigen.functional, under PyTorch's other path."""
from minigen.functional import *  # noqa: F401,F403
