"""minigen.optim: optimizers with PyTorch's update rules, learning-rate schedules, the EMA
of parameters, and gradient clipping (also at minigen.nn.utils, as in PyTorch)."""
from minigen.nn.utils import clip_grad_norm_, clip_grad_value_
from minigen.optim import lr_scheduler
from minigen.optim.ema import EMA
from minigen.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearWarmup, WarmupCosine
from minigen.optim.optimizer import SGD, Adam, AdamW, Optimizer
