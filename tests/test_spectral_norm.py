"""Specification of minigen.nn.utils.spectral_norm: PyTorch's torch.nn.utils.spectral_norm step
for step (same u, v after each power iteration, same outputs and gradients, no iteration in
eval mode), its gradient by finite differences, sigma -> 1, and u and v as buffers that a
checkpoint saves and restores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minigen
from minigen import nn
from minigen.nn.utils import remove_spectral_norm, spectral_norm

LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), lambda: torch.nn.Linear(6, 4), (3, 6)),
    "conv2d": (lambda: nn.Conv2d(2, 5, 3, padding=1), lambda: torch.nn.Conv2d(2, 5, 3, padding=1),
               (2, 2, 5, 5)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                         lambda: torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                         (2, 3, 3, 3)),
}


def twin_layers(kind: str):
    """A spectrally normalized minigen layer and its PyTorch twin in float64, same weights, u
    and v."""
    make_ours, make_theirs, input_shape = LAYERS[kind]
    torch.manual_seed(0)
    theirs = torch.nn.utils.spectral_norm(make_theirs().double())
    ours = spectral_norm(make_ours().double())
    ours.load_state_dict({key: value.detach().numpy() for key, value in theirs.state_dict().items()})
    return ours, theirs, input_shape


@pytest.mark.parametrize("kind", list(LAYERS))
def test_state_dict_names_are_pytorchs(kind):
    ours, theirs, _ = twin_layers(kind)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("kind", list(LAYERS))
def test_training_forwards_match_pytorch_power_iteration_by_power_iteration(kind):
    ours, theirs, input_shape = twin_layers(kind)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal(input_shape)
        x_ours, x_theirs = minigen.Tensor(x), torch.tensor(x)
        out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
        np.testing.assert_allclose(out_ours.detach().numpy(), out_theirs.detach().numpy(), rtol=1e-10,
                                   atol=1e-12)
        for buffer in ("weight_u", "weight_v"):
            np.testing.assert_allclose(getattr(ours, buffer).numpy(),
                                       getattr(theirs, buffer).numpy(), rtol=1e-10, atol=1e-12)
        (out_ours * out_ours).sum().backward()
        (out_theirs * out_theirs).sum().backward()
        np.testing.assert_allclose(ours.weight_orig.grad.numpy(), theirs.weight_orig.grad.numpy(),
                                   rtol=1e-9, atol=1e-11)
        ours.zero_grad()
        theirs.zero_grad()


@pytest.mark.parametrize("kind", list(LAYERS))
def test_eval_mode_uses_u_and_v_as_they_are(kind):
    ours, theirs, input_shape = twin_layers(kind)
    ours.eval()
    theirs.eval()
    u_before = ours.weight_u.numpy().copy()
    x = np.random.default_rng(2).standard_normal(input_shape)
    np.testing.assert_allclose(ours(minigen.Tensor(x)).detach().numpy(),
                               theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours.weight_u.numpy(), u_before)


def test_power_iteration_drives_the_largest_singular_value_to_one():
    layer = spectral_norm(nn.Linear(10, 7).double())
    for _ in range(200):
        layer(minigen.randn(2, 10, dtype=np.float64))
    weight = layer.weight.detach().numpy()
    assert np.linalg.svd(weight, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-3)
    original = layer.weight_orig.data
    assert np.linalg.svd(original, compute_uv=False)[0] != pytest.approx(1.0, rel=1e-2)


def test_the_normalized_weight_passes_gradcheck_through_sigma():
    layer = spectral_norm(nn.Linear(4, 3).double()).eval()
    hook = next(iter(layer._forward_pre_hooks.values()))

    def normalized(weight_orig):
        layer._parameters["weight_orig"] = weight_orig
        return hook.compute_weight(layer, do_power_iteration=False)

    weight = minigen.Tensor(layer.weight_orig.data.copy(), requires_grad=True)
    assert minigen.gradcheck(normalized, [weight])
    assert minigen.gradgradcheck(normalized, [weight])


def test_u_and_v_survive_a_checkpoint_round_trip(tmp_path):
    minigen.manual_seed(3)
    model = nn.Sequential(spectral_norm(nn.Conv2d(1, 4, 3)), nn.ReLU(),
                          spectral_norm(nn.Conv2d(4, 2, 3)))
    for _ in range(4):
        model(minigen.randn(2, 1, 7, 7))
    minigen.save_checkpoint(tmp_path / "sn.h5", models={"d": model}, step=4)
    minigen.manual_seed(99)  # other random u, v
    fresh = nn.Sequential(spectral_norm(nn.Conv2d(1, 4, 3)), nn.ReLU(),
                          spectral_norm(nn.Conv2d(4, 2, 3)))
    assert not np.array_equal(fresh[0].weight_u.numpy(), model[0].weight_u.numpy())
    minigen.load_checkpoint(tmp_path / "sn.h5", models={"d": fresh})
    for name, buffer in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), buffer.numpy(), err_msg=name)
    x = minigen.randn(2, 1, 7, 7)
    np.testing.assert_array_equal(fresh(x).detach().numpy(), model(x).detach().numpy())


def test_remove_spectral_norm_leaves_the_normalized_weight_as_a_parameter():
    layer = spectral_norm(nn.Linear(5, 3).double())
    layer(minigen.randn(1, 5, dtype=np.float64))
    layer.eval()
    expected = layer(minigen.ones(1, 5, dtype=np.float64)).detach().numpy()
    remove_spectral_norm(layer)
    assert sorted(layer.state_dict()) == ["bias", "weight"]
    np.testing.assert_allclose(layer(minigen.ones(1, 5, dtype=np.float64)).detach().numpy(), expected)


def test_bad_uses_are_one_clear_error():
    with pytest.raises(ValueError, match="has no parameter 'kernel'"):
        spectral_norm(nn.Linear(2, 2), name="kernel")
    layer = spectral_norm(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="already spectrally normalized"):
        spectral_norm(layer)
