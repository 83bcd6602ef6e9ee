"""minigen.nn: Module, Parameter and the layers that image models need, with PyTorch's names,
weight layouts, default initialisations and state-dict keys."""
from minigen.nn import init, utils
from minigen.nn.activation import GELU, LeakyReLU, ReLU, SiLU, Sigmoid, Softplus, Tanh
from minigen.nn.containers import ModuleDict, ModuleList, Sequential
from minigen.nn.layers import (AvgPool2d, Conv2d, ConvTranspose2d, Dropout, Embedding, Flatten,
                               Identity, Linear, MaxPool2d, Upsample)
from minigen.nn.module import Module, Parameter
from minigen.nn.normalization import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
