"""What the DDPM demos that sample need: the main job's trained model (`minigen train ddpm`
writes runs/ddpm-digits/checkpoint.h5), trained here first when it is not there yet."""
from __future__ import annotations

import os
import sys

from minigen import run
from minigen.ddpm import DDPMLoop

MAIN_JOB_CHECKPOINT = os.path.join("runs", "ddpm-digits", "checkpoint.h5")


def load_or_train(checkpoint: str = MAIN_JOB_CHECKPOINT) -> DDPMLoop:
    """The DDPM loop of `checkpoint` with its EMA weights; runs the main job (the same as
    `minigen train ddpm --out FOLDER`, a few minutes) when the file does not exist."""
    if not os.path.exists(checkpoint):
        folder = os.path.dirname(checkpoint) or "."
        print(f"{checkpoint} not found: training the main job into {folder} first "
              "(minigen train ddpm)", file=sys.stderr, flush=True)
        run.train(DDPMLoop, run.default_config(DDPMLoop, out=folder, eval_samples=0))
    loop, _, step = run.load_trained(checkpoint, DDPMLoop)
    print(f"loaded {checkpoint} (step {step})", file=sys.stderr)
    return loop
