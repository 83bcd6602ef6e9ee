"""Specification of the denoisers: the U-Net (shapes at each image size, gradients reaching
every parameter, the same function as its PyTorch twin, the class-conditioning hook) and the
MLP denoiser for toy points. Tiny widths keep every test well under a second."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import minigen
from minigen import diffusion
from minigen.models.denoiser_mlp import MLPDenoiser
from minigen.models.unet import UNet, timestep_embedding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def tiny_unet(**overrides) -> UNet:
    options = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1)
    options.update(overrides)
    return UNet(**options)


@pytest.mark.parametrize("shape,mults", [((2, 1, 8, 8), (1, 2)), ((2, 1, 16, 16), (1, 2)),
                                         ((1, 1, 28, 28), (1, 2, 2)), ((1, 3, 32, 32), (1, 2, 2))])
def test_unet_output_has_the_shape_of_its_input(shape, mults):
    minigen.manual_seed(0)
    model = tiny_unet(in_channels=shape[1], channel_mults=mults)
    out = model(minigen.randn(*shape), minigen.randint(0, 1000, (shape[0],)))
    assert out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("num_classes", [None, 10])
def test_diffusion_loss_gradient_reaches_every_unet_parameter(num_classes):
    minigen.manual_seed(0)
    model = tiny_unet(num_classes=num_classes)
    schedule = diffusion.NoiseSchedule("linear")
    labels = minigen.tensor([1, 2, 3, 10]) if num_classes else None
    loss = diffusion.diffusion_loss(lambda x_t, t: model(x_t, t, labels), schedule,
                                    minigen.randn(4, 1, 8, 8))
    loss.backward()
    missing = [name for name, p in model.named_parameters()
               if p.grad is None or not np.any(p.grad.numpy() != 0)]
    assert not missing, f"no gradient reached {missing}"


def test_unet_computes_the_same_function_as_its_pytorch_twin():
    torch = pytest.importorskip("torch")
    from torch_unet import from_minigen

    minigen.manual_seed(0)
    model = tiny_unet(num_classes=3, num_res_blocks=2)
    twin = from_minigen(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t, labels = np.array([0, 17, 999]), np.array([0, 3, 2])
    ours = model(minigen.tensor(x), minigen.tensor(t), minigen.tensor(labels))
    theirs = twin(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels))
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-4, atol=1e-4)
    (ours * ours).sum().backward()
    (theirs * theirs).sum().backward()
    twin_grads = dict(twin.named_parameters())
    for name, param in model.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), twin_grads[name].grad.numpy(),
                                   rtol=1e-3, atol=1e-4, err_msg=name)


def test_timestep_embedding_is_sines_then_cosines_of_geometric_frequencies():
    embedding = timestep_embedding(minigen.tensor([0, 1, 500]), 8).numpy()
    assert embedding.shape == (3, 8)
    np.testing.assert_allclose(embedding[0], [0, 0, 0, 0, 1, 1, 1, 1])
    frequencies = 10_000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(embedding[2], np.concatenate([np.sin(500 * frequencies),
                                                             np.cos(500 * frequencies)]), atol=1e-6)


def test_conditional_unet_treats_missing_labels_as_the_null_class():
    minigen.manual_seed(0)
    model = tiny_unet(num_classes=10)
    x, t = minigen.randn(2, 1, 8, 8), minigen.tensor([5, 5])
    null = model(x, t).detach().numpy()
    explicit = model(x, t, minigen.tensor([10, 10])).detach().numpy()
    other = model(x, t, minigen.tensor([3, 3])).detach().numpy()
    np.testing.assert_array_equal(null, explicit)
    assert np.abs(other - null).max() > 1e-4, "the class label must change the prediction"


def test_labels_for_an_unconditional_unet_are_refused_with_the_fix():
    model = tiny_unet()
    with pytest.raises(ValueError, match="num_classes"):
        model(minigen.randn(1, 1, 8, 8), minigen.tensor([0]), minigen.tensor([1]))


def test_unet_names_the_expected_shape_when_the_input_cannot_be_halved():
    model = tiny_unet(channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*divisible by 4"):
        model(minigen.randn(1, 1, 10, 10), minigen.tensor([0]))


@pytest.mark.parametrize("features", [1, 2])
def test_mlp_denoiser_maps_points_to_points_and_trains_every_parameter(features):
    minigen.manual_seed(0)
    model = MLPDenoiser(features, hidden=16, depth=2)
    loss = diffusion.diffusion_loss(model, diffusion.NoiseSchedule("cosine", 100),
                                    minigen.randn(32, features))
    loss.backward()
    assert model(minigen.randn(5, features), minigen.tensor([0, 1, 2, 3, 99])).shape == (5, features)
    assert all(p.grad is not None and np.any(p.grad.numpy() != 0) for p in model.parameters())
