"""Time one DCGAN training step (a D step on real and fake, then a G step) in minigen and in a
PyTorch twin of the same architecture, with the ratio minigen / PyTorch measured in one run.

The minigen side is GANLoop.train_step itself; the twin is built with torch.nn from the same
layer list, loads minigen's weights by state-dict name (so the forward passes are checked to
agree first), and runs the same step: the non-saturating loss, Adam (0.5, 0.999), D frozen
during the G step, and the loop's bookkeeping (losses, mean D(x) and gradient norms read back,
the EMA of G's weights).

    python benchmarks/bench_gan.py                       # the digits DCGAN: 8x8, width 32, batch 64
    python benchmarks/bench_gan.py --image-size 32 --width 64 --steps 10
    python benchmarks/bench_gan.py --device cuda --image-size 32 --width 64 --batch-size 128
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
from minigen import backend, nn
from minigen.gan import GANLoop
from minigen.run import default_config


def torch_twin(module: nn.Module, torch):
    """The same layers in torch.nn, under the same state-dict names, with the same weights."""
    layers = []
    for layer in module.net:
        kind = type(layer).__name__
        if kind in ("Conv2d", "ConvTranspose2d"):
            layers.append(getattr(torch.nn, kind)(layer.in_channels, layer.out_channels,
                                                  layer.kernel_size, layer.stride, layer.padding,
                                                  bias=layer.bias is not None))
        elif kind == "BatchNorm2d":
            layers.append(torch.nn.BatchNorm2d(layer.num_features))
        elif kind == "LeakyReLU":
            layers.append(torch.nn.LeakyReLU(layer.negative_slope))
        else:
            layers.append(getattr(torch.nn, kind)())
    twin = torch.nn.Module()
    twin.net = torch.nn.Sequential(*layers)
    twin.load_state_dict({key: torch.tensor(value.numpy())
                          for key, value in module.state_dict().items()})
    return twin


def torch_step(generator, discriminator, g_optimizer, d_optimizer, real, latent_dim, torch,
               shadows, ema_decay):
    """The step of GANLoop.train_step with d_steps=1, in PyTorch: the same updates, and the
    same bookkeeping (the losses, mean D(x) of real and fakes and both gradient norms read
    back, and the EMA of G's weights, `shadows` (None: none), by PyTorch's multi-tensor
    lerp)."""
    softplus = torch.nn.functional.softplus
    n = real.shape[0]
    fake = generator.net(torch.randn(n, latent_dim, 1, 1, device=real.device))
    d_optimizer.zero_grad(set_to_none=True)
    real_logits = discriminator.net(real).reshape(n, 1)
    fake_logits = discriminator.net(fake.detach()).reshape(n, 1)
    loss_d = softplus(-real_logits).mean() + softplus(fake_logits).mean()
    loss_d.backward()
    read_out = [float(loss_d), float(torch.sigmoid(real_logits.detach()).mean()),
                float(torch.sigmoid(fake_logits.detach()).mean()),
                float(torch.nn.utils.get_total_norm([p.grad for p in discriminator.parameters()]))]
    d_optimizer.step()
    g_optimizer.zero_grad(set_to_none=True)
    discriminator.requires_grad_(False)
    loss_g = softplus(-discriminator.net(fake).reshape(n, 1)).mean()
    loss_g.backward()
    discriminator.requires_grad_(True)
    read_out += [float(loss_g),
                 float(torch.nn.utils.get_total_norm([p.grad for p in generator.parameters()]))]
    g_optimizer.step()
    if shadows is not None:
        with torch.no_grad():
            torch._foreach_lerp_(shadows, list(generator.parameters()), 1.0 - ema_decay)
    return read_out


def timed_in_turn(steps: list, count: int, synchronize=lambda: None) -> list[list[float]]:
    """Seconds per call of each step, the steps called in turn `count` times after two warm-up
    rounds (compiles, caches), so that both sides meet the same load on a shared machine.
    synchronize: waits for the GPU (both sides) before each clock reading."""
    for step in steps * 2:
        step()
    times = [[] for _ in steps]
    for _ in range(count):
        for step, record in zip(steps, times):
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            record.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=None, help="DCGAN width (GANLoop default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: both sides on the GPU (PyTorch on its CPU if it has no CUDA)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    device = backend.check_device(args.device)
    torch_device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"

    def synchronize():
        if device == "cuda":
            backend.xp_for("cuda").cuda.Device().synchronize()
            if torch_device == "cuda":
                torch.cuda.synchronize()

    minigen.manual_seed(0)
    config = default_config(GANLoop, width=args.width, batch_size=args.batch_size)
    config.update(data_kind="images", data_shape=[args.channels, args.image_size, args.image_size])
    loop = GANLoop(config, device)
    generator, discriminator = (torch_twin(m, torch).to(torch_device)
                                for m in (loop.generator, loop.discriminator))
    modes = ""
    if device == "cuda":
        from gpu_modes import tf32_off
        modes = f"; {tf32_off(torch)}"
    lr, betas = loop.g_optimizer.param_groups[0]["lr"], (config["beta1"], config["beta2"])
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)

    # The twins agree before anything is timed.
    z = loop.noise(4)
    loop.generator.eval(), generator.eval()
    with minigen.no_grad(), torch.no_grad():
        ours = loop.generator(z).numpy()
        theirs = generator.net(torch.tensor(z.numpy(), device=torch_device)
                               .reshape(4, -1, 1, 1)).cpu().numpy()
    loop.generator.train(), generator.train()
    difference = float(np.abs(ours - theirs).max())
    assert difference < 1e-4, f"the PyTorch twin's generator differs by {difference}"

    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (args.batch_size, args.channels, args.image_size,
                               args.image_size)).astype(np.float32)
    real_ours = minigen.tensor(real, device=device)
    real_theirs = torch.tensor(real, device=torch_device)
    # The EMA of G where the loop keeps one (--g-ema-decay 0 keeps none).
    shadows = ([p.detach().clone() for p in generator.parameters()]
               if loop.g_ema is not None else None)
    ema_decay = loop.g_ema.decay if loop.g_ema is not None else 0.0
    ours, theirs = timed_in_turn(
        [lambda: loop.train_step(real_ours, None, 0),
         lambda: torch_step(generator, discriminator, g_optimizer, d_optimizer, real_theirs,
                            loop.latent_dim, torch, shadows, ema_decay)], args.steps, synchronize)
    parameters = sum(p.numel() for m in loop.models().values() for p in m.parameters())
    print(f"DCGAN training step, {args.channels}x{args.image_size}x{args.image_size} images, "
          f"width {loop.width}, "
          f"batch {args.batch_size}, {parameters:,} parameters; PyTorch {torch.__version__} with "
          f"{args.threads} threads; device {device} (PyTorch on {torch_device}){modes}; "
          f"{args.steps} steps each, in turn (median / best)")
    print(f"  minigen  {1e3 * statistics.median(ours):8.1f} ms / {1e3 * min(ours):8.1f} ms")
    print(f"  pytorch  {1e3 * statistics.median(theirs):8.1f} ms / {1e3 * min(theirs):8.1f} ms")
    print(f"  ratio minigen / pytorch: {statistics.median(ours) / statistics.median(theirs):.2f} "
          f"(median), {min(ours) / min(theirs):.2f} (best)")


if __name__ == "__main__":
    main()
