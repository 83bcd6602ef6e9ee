"""Time one DDPM training step of the U-Net (forward, backward, AdamW) in minigen and in its
PyTorch twin (benchmarks/torch_unet.py: the same layers under the same names, loaded with
minigen's weights and checked to agree first), plus sampling speed, in one run.

Both sides get the same batch x_t, timesteps and target noise; their steps alternate, so a
busy machine slows both alike and the ratio stays meaningful. Cases: 8x8 (batch 64) and
16x16 (batch 32) on the CPU; 32x32 (batch 128) on the GPU with --device cuda and CuPy.

    python benchmarks/bench_ddpm.py                        # the CPU cases, PyTorch on 2 threads
    python benchmarks/bench_ddpm.py --device cuda          # adds the 32x32 GPU case
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

# First: the CPU backend sets OpenMP's spin count (kernels/cpu.py) before PyTorch loads the
# libgomp that both sides then share.
import minigen.kernels.cpu  # noqa: F401
import minigen
import minigen.functional as F
from minigen import backend
from minigen.models.unet import UNet
from minigen.optim import AdamW

from torch_unet import from_minigen

# (image size, batch, device, channel multipliers): the three cases.
CASES = [(8, 64, "cpu", (1, 2)), (16, 32, "cpu", (1, 2)), (32, 128, "cuda", (1, 2, 2))]
SAMPLING_BATCH = 64
DDIM_STEPS = 50


def synchronize(device: str, torch) -> None:
    if device == "cuda":
        backend.xp_for("cuda").cuda.Device().synchronize()
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def alternating(ours, theirs, count: int, device: str, torch) -> tuple[list, list]:
    """Seconds per call of each, alternating, after two warm-up calls of each."""
    for step in (ours, theirs, ours, theirs):
        step()
    times = ([], [])
    for _ in range(count):
        for step, record in ((ours, times[0]), (theirs, times[1])):
            synchronize(device, torch)
            start = time.perf_counter()
            step()
            synchronize(device, torch)
            record.append(time.perf_counter() - start)
    return times


def run_case(size: int, batch: int, device: str, mults: tuple, args, torch) -> None:
    minigen.manual_seed(0)
    model = UNet(1, args.base_channels, mults, 1)
    twin = from_minigen(model)
    model.to(device)
    torch_device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    twin.to(torch_device)
    if device == "cuda":
        from gpu_modes import tf32_off
        print(tf32_off(torch))
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
    noise = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
    t = rng.integers(0, 1000, batch)
    ours_in = [minigen.tensor(a, device=device) for a in (x_t, noise, t)]
    theirs_in = [torch.from_numpy(a).to(torch_device) for a in (x_t, noise, t)]

    with minigen.no_grad(), torch.no_grad():  # the twins agree before anything is timed
        difference = np.abs(backend.to_numpy(model(ours_in[0], ours_in[2]).data)
                            - twin(theirs_in[0], theirs_in[2]).cpu().numpy()).max()
    assert difference < 1e-3, f"the PyTorch twin differs by {difference}"

    optimizer = AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    torch_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.0)

    def our_step():
        loss = F.mse_loss(model(ours_in[0], ours_in[2]), ours_in[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def their_step():
        loss = torch.nn.functional.mse_loss(twin(theirs_in[0], theirs_in[2]), theirs_in[1])
        torch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch_optimizer.step()

    def our_forward():
        with minigen.no_grad():
            model(ours_in[0][:SAMPLING_BATCH], ours_in[2][:SAMPLING_BATCH])

    def their_forward():
        with torch.no_grad():
            twin(theirs_in[0][:SAMPLING_BATCH], theirs_in[2][:SAMPLING_BATCH])

    ours, theirs = alternating(our_step, their_step, args.steps, device, torch)
    ours_f, theirs_f = alternating(our_forward, their_forward, args.steps, device, torch)
    parameters = sum(p.numel() for p in model.parameters())
    sampled = min(SAMPLING_BATCH, batch)
    print(f"U-Net {size}x{size}, batch {batch}, base {args.base_channels}, mults {mults}, "
          f"{parameters:,} parameters, minigen on {device}, PyTorch on {torch_device}")
    print(f"  training step  minigen {1e3 * statistics.median(ours):8.1f} ms   pytorch "
          f"{1e3 * statistics.median(theirs):8.1f} ms   ratio "
          f"{statistics.median(ours) / statistics.median(theirs):.2f} (median of {args.steps}; "
          f"best {min(ours) / min(theirs):.2f})")
    rate = [sampled / (DDIM_STEPS * statistics.median(times)) for times in (ours_f, theirs_f)]
    print(f"  sampling       minigen {rate[0]:8.1f} img/s  pytorch {rate[1]:8.1f} img/s  ratio "
          f"{rate[1] / rate[0]:.2f} (DDIM {DDIM_STEPS} steps, batch {sampled}; forward "
          f"{1e3 * statistics.median(ours_f):.1f} vs {1e3 * statistics.median(theirs_f):.1f} ms)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu",
                        help="cuda adds the 32x32 case on the GPU")
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--gpu-only", action="store_true",
                        help="with --device cuda: only the GPU case (benchmarks/gpu_check.sh)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads")
    for size, batch, device, mults in CASES:
        if args.gpu_only and device != "cuda":
            continue
        if device == "cuda":
            if args.device != "cuda":
                continue
            problem = backend.cuda_status()
            if problem is not None:
                print(f"skipping the {size}x{size} GPU case: {problem}")
                continue
        run_case(size, batch, device, mults, args, torch)


if __name__ == "__main__":
    main()
