"""Checkpoints resume exactly across processes: a small conv net trained 10 steps straight
equals the same net trained 5 steps, saved, loaded by a fresh Python process and trained 5
more, bit for bit (weights, buffers and the optimizer's moments)."""
import subprocess
import sys
import textwrap

import h5py
import numpy as np

TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import minigen
    from minigen import nn, functional as F
    from minigen.optim import Adam

    out, start, stop, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    minigen.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1))
    optimizer = Adam(model.parameters(), lr=1e-2)
    if resume != "-":
        minigen.load_checkpoint(resume, models={"net": model}, optimizers={"adam": optimizer})
    for step in range(start, stop):
        x = minigen.randn(4, 1, 8, 8)          # the data come from the checkpointed generator
        loss = F.mse_loss(model(x), x * 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    minigen.save_checkpoint(out, models={"net": model}, optimizers={"adam": optimizer}, step=stop)
""")


def run(script, *args):
    subprocess.run([sys.executable, str(script), *map(str, args)], check=True, timeout=120)


def arrays(path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return found


def test_five_steps_then_five_in_a_fresh_process_equal_ten_straight(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    run(script, tmp_path / "straight.h5", 0, 10, "-")
    run(script, tmp_path / "half.h5", 0, 5, "-")
    run(script, tmp_path / "resumed.h5", 5, 10, tmp_path / "half.h5")
    straight, resumed = arrays(tmp_path / "straight.h5"), arrays(tmp_path / "resumed.h5")
    assert straight.keys() == resumed.keys() and any(k.startswith("optimizers") for k in straight)
    for name in straight:
        assert np.array_equal(straight[name], resumed[name]), name
    assert not np.array_equal(arrays(tmp_path / "half.h5")["models/net/0.weight"],
                              straight["models/net/0.weight"])
