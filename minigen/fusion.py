"""The fusion switch: whether ops and optimizers may use the fused kernels of kernels/.

Fused kernels (group norm + SiLU, bias + activation, the optimizers' one-pass updates, ...)
compute what a chain of small ops computes, in fewer passes over memory. Turning fusion off
runs the composed ops instead, for reading the code path by path and for comparing results.
The switch starts from the environment (MINIGEN_FUSION=0 turns it off) and is the one piece of
global state beside the no-grad switch and the default generators.
"""
from __future__ import annotations

import contextlib
import os

_OFF_WORDS = ("0", "false", "off", "no")
_enabled = os.environ.get("MINIGEN_FUSION", "1").strip().lower() not in _OFF_WORDS


def fusion_enabled() -> bool:
    """True when ops may dispatch to fused kernels."""
    return _enabled


def set_fusion(enabled: bool) -> None:
    """Turn the fused kernels on or off for every op and optimizer from now on."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def fusion(enabled: bool):
    """`with minigen.fusion(False): ...` runs the block on the composed ops, then restores."""
    previous = fusion_enabled()
    set_fusion(enabled)
    try:
        yield
    finally:
        set_fusion(previous)
