"""The GAN loop, as a specification: what each loss pushes where, what each step may change,
the WGAN-GP penalty against PyTorch, the models' shapes, and exact resumption via the harness."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen.gan import (LOSSES, GANLoop, discriminator_loss, generator_loss,
                         gradient_penalty, r1_penalty)
from minigen.models.dcgan import LAYOUTS, DCGANDiscriminator, DCGANGenerator, dcgan_init
from minigen.models.mlp import MLPDiscriminator, MLPGenerator
from minigen.run import default_config, train
from minigen.tensor import enable_grad
from helpers import assert_close, import_torch

torch = import_torch()


def logit_grads(loss_fn, *logits):
    """The loss and its gradient with respect to each logit array (float64)."""
    tensors = [minigen.tensor(np.asarray(x, dtype=np.float64), requires_grad=True) for x in logits]
    loss = loss_fn(*tensors)
    loss.backward()
    return loss.item(), [t.grad.numpy() for t in tensors]


# --- losses -------------------------------------------------------------------------------
REAL, FAKE = [[0.5], [-0.3]], [[-0.2], [0.4]]  # inside the hinge margins: no gradient is zero


@pytest.mark.parametrize("loss", LOSSES)
def test_discriminator_loss_pushes_real_logits_up_and_fake_logits_down(loss):
    _, (grad_real, grad_fake) = logit_grads(lambda r, f: discriminator_loss(r, f, loss), REAL, FAKE)
    assert np.all(grad_real < 0) and np.all(grad_fake > 0)


@pytest.mark.parametrize("loss", LOSSES)
def test_generator_loss_pushes_fake_logits_up(loss):
    _, (grad_fake,) = logit_grads(lambda f: generator_loss(f, loss), FAKE)
    assert np.all(grad_fake < 0)


@pytest.mark.parametrize("loss, d_value, g_value", [
    ("minimax", 2 * math.log(2), -math.log(2)),      # D(x) = 1/2 everywhere: the equilibrium
    ("nonsaturating", 2 * math.log(2), math.log(2)),
    ("hinge", 2.0, 0.0),
    ("wgan-gp", 0.0, 0.0),
])
def test_losses_at_zero_logits_take_their_textbook_values(loss, d_value, g_value):
    zeros = np.zeros((3, 1))
    assert logit_grads(lambda r, f: discriminator_loss(r, f, loss), zeros, zeros)[0] == \
        pytest.approx(d_value, abs=1e-12)
    assert logit_grads(lambda f: generator_loss(f, loss), zeros)[0] == \
        pytest.approx(g_value, abs=1e-12)


def test_minimax_generator_gradient_vanishes_where_the_nonsaturating_one_does_not():
    confident_reject = [[-10.0]]  # D(G(z)) = sigmoid(-10), about 5e-5
    _, (minimax,) = logit_grads(lambda f: generator_loss(f, "minimax"), confident_reject)
    _, (nonsaturating,) = logit_grads(lambda f: generator_loss(f, "nonsaturating"),
                                      confident_reject)
    assert abs(minimax.item()) < 1e-4
    assert nonsaturating.item() == pytest.approx(-1.0, abs=1e-4)


def test_hinge_discriminator_loss_ignores_logits_beyond_the_margin():
    _, (grad_real, grad_fake) = logit_grads(lambda r, f: discriminator_loss(r, f, "hinge"),
                                            [[2.0]], [[-1.5]])
    assert grad_real.item() == 0.0 and grad_fake.item() == 0.0


def test_probabilistic_discriminator_loss_equals_binary_cross_entropy():
    real, fake = minigen.tensor([[1.5], [-0.5]]), minigen.tensor([[0.3], [-2.0]])
    expected = F.binary_cross_entropy_with_logits(real, minigen.ones(2, 1)) + \
        F.binary_cross_entropy_with_logits(fake, minigen.zeros(2, 1))
    assert discriminator_loss(real, fake, "nonsaturating").item() == \
        pytest.approx(expected.item(), rel=1e-6)


def test_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="nonsaturating, minimax, hinge, wgan-gp"):
        generator_loss(minigen.zeros(2, 1), "vanilla")


# --- the gradient penalty against PyTorch -------------------------------------------------------
def mlp_critic(weights):
    """D(x) = W2 leaky_relu(W1 x + b1) + b2 in either library."""
    w1, b1, w2, b2 = weights
    if isinstance(w1, torch.Tensor):
        return lambda x: torch.nn.functional.linear(
            torch.nn.functional.leaky_relu(torch.nn.functional.linear(x, w1, b1), 0.2), w2, b2)
    return lambda x: F.linear(F.leaky_relu(F.linear(x, w1, b1), 0.2), w2, b2)


def conv_critic(weights):
    """D(x) = sum of conv(leaky_relu(conv(x, w1, stride 2)), w2) in either library."""
    w1, w2 = weights
    if isinstance(w1, torch.Tensor):
        tf = torch.nn.functional
        return lambda x: tf.conv2d(tf.leaky_relu(tf.conv2d(x, w1, stride=2, padding=1), 0.2),
                                   w2).reshape(x.shape[0], 1)
    return lambda x: F.conv2d(F.leaky_relu(F.conv2d(x, w1, stride=2, padding=1), 0.2),
                              w2).reshape(x.shape[0], 1)


def assert_weight_gradients_match(ours, theirs):
    """The weights' gradients agree. A weight that grad_x does not depend on (the biases,
    through a piecewise-linear critic) may get None in one library and zeros in the other:
    both mean zero."""
    for param, reference in zip(ours, theirs):
        ours_grad = np.zeros_like(param.data) if param.grad is None else param.grad.numpy()
        their_grad = np.zeros_like(param.data) if reference.grad is None else reference.grad.numpy()
        assert_close(ours_grad, their_grad, np.float64)


@pytest.mark.parametrize("critic, sample_shape, weight_shapes", [
    (mlp_critic, (2,), [(16, 2), (16,), (1, 16), (1,)]),
    (conv_critic, (1, 6, 6), [(4, 1, 4, 4), (1, 4, 3, 3)]),
])
def test_gradient_penalty_and_its_weight_gradients_match_pytorch(critic, sample_shape,
                                                                  weight_shapes):
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape) * 0.5 for shape in weight_shapes]
    real, fake = (rng.standard_normal((5, *sample_shape)) for _ in range(2))
    minigen.manual_seed(3)
    eps = minigen.rand(5, *([1] * len(sample_shape)), dtype=np.float64).numpy()
    minigen.manual_seed(3)  # gradient_penalty draws the same eps
    ours = [minigen.tensor(w, requires_grad=True) for w in weights]
    penalty = gradient_penalty(critic(ours), minigen.tensor(real), minigen.tensor(fake))
    penalty.backward()

    theirs = [torch.tensor(w, requires_grad=True) for w in weights]
    x_hat = torch.tensor(eps * real + (1 - eps) * fake, requires_grad=True)
    (grad_x,) = torch.autograd.grad(critic(theirs)(x_hat).sum(), x_hat, create_graph=True)
    expected = ((grad_x.reshape(5, -1).norm(dim=1) - 1) ** 2).mean()
    expected.backward()
    assert_close(penalty.item(), expected.item(), np.float64)
    assert_weight_gradients_match(ours, theirs)


@pytest.mark.parametrize("critic, sample_shape, weight_shapes", [
    (mlp_critic, (2,), [(16, 2), (16,), (1, 16), (1,)]),
    (conv_critic, (1, 6, 6), [(4, 1, 4, 4), (1, 4, 3, 3)]),
])
def test_r1_penalty_and_its_weight_gradients_match_pytorch(critic, sample_shape, weight_shapes):
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(shape) * 0.5 for shape in weight_shapes]
    real = rng.standard_normal((5, *sample_shape))
    ours = [minigen.tensor(w, requires_grad=True) for w in weights]
    penalty = r1_penalty(critic(ours), minigen.tensor(real))
    penalty.backward()
    theirs = [torch.tensor(w, requires_grad=True) for w in weights]
    x = torch.tensor(real, requires_grad=True)
    (grad_x,) = torch.autograd.grad(critic(theirs)(x).sum(), x, create_graph=True)
    expected = (grad_x.reshape(5, -1) ** 2).sum(dim=1).mean()
    expected.backward()
    assert_close(penalty.item(), expected.item(), np.float64)
    assert_weight_gradients_match(ours, theirs)


def test_r1_penalty_weight_gradient_passes_gradcheck_through_second_derivatives():
    """The penalty as a function of D's weights is built from a gradient (create_graph=True);
    its own gradient, by double backprop, agrees with finite differences (a smooth D: tanh)."""
    rng = np.random.default_rng(2)
    real = minigen.tensor(rng.standard_normal((4, 3)))

    def penalty(w1, w2):
        with enable_grad():  # gradcheck evaluates under no_grad; R1 needs its inner gradient
            return r1_penalty(lambda x: F.linear(F.tanh(F.linear(x, w1)), w2), real)

    weights = [minigen.tensor(rng.standard_normal(shape) * 0.7, requires_grad=True)
               for shape in ((5, 3), (1, 5))]
    assert minigen.gradcheck(penalty, weights)


def test_r1_is_zero_for_a_discriminator_flat_in_its_input():
    constant = lambda x: x[:, :1] * 0.0 + 1.0  # noqa: E731
    assert r1_penalty(constant, minigen.randn(3, 2, dtype=np.float64)).item() == 0.0


# --- the models -----------------------------------------------------------------------------
@pytest.mark.parametrize("image_size", sorted(LAYOUTS))
def test_dcgan_maps_noise_to_images_and_images_to_one_logit(image_size):
    generator = DCGANGenerator(latent_dim=6, channels=3, image_size=image_size, width=4)
    discriminator = DCGANDiscriminator(channels=3, image_size=image_size, width=4)
    images = generator(minigen.randn(2, 6))
    assert images.shape == (2, 3, image_size, image_size)
    assert float(images.data.min()) >= -1 and float(images.data.max()) <= 1  # tanh out
    assert discriminator(images).shape == (2, 1)


def test_dcgan_refuses_an_image_size_it_has_no_layout_for():
    with pytest.raises(ValueError, match="resize the images"):
        DCGANGenerator(image_size=12)


def test_dcgan_init_draws_conv_weights_from_normal_with_std_0_02():
    generator = dcgan_init(DCGANGenerator(latent_dim=100, image_size=32, width=32))
    weights = np.concatenate([p.data.ravel() for name, p in generator.named_parameters()
                              if p.ndim == 4])
    assert abs(weights.mean()) < 1e-3 and weights.std() == pytest.approx(0.02, rel=0.02)


def test_wgan_gp_critic_has_no_batch_norm():
    critic = GANLoop(tiny_config("wgan-gp", "images"), "cpu").discriminator
    assert not any("BatchNorm" in type(m).__name__ for m in critic.modules())


def test_mlps_map_noise_to_points_and_points_to_one_logit():
    points = MLPGenerator(latent_dim=3, out_features=2, hidden=8)(minigen.randn(4, 3))
    assert points.shape == (4, 2)
    assert MLPDiscriminator(in_features=2, hidden=8)(points).shape == (4, 1)


# --- the loop's mechanics -------------------------------------------------------------------
def tiny_config(loss: str, kind: str, d_steps: int = 1) -> dict:
    shape = [1, 8, 8] if kind == "images" else [2]
    return dict(loss=loss, d_steps=d_steps, latent_dim=4, width=8, gp_weight=10.0, lr=1e-3,
                beta1=0.5, beta2=0.999, data_kind=kind, data_shape=shape)


def snapshot(module) -> dict:
    return {name: p.data.copy() for name, p in module.named_parameters()}


def changed(before: dict, module) -> list:
    return [name for name, p in module.named_parameters()
            if not np.array_equal(before[name], p.data)]


def real_batch(kind: str) -> minigen.Tensor:
    return minigen.randn(6, 1, 8, 8).tanh() if kind == "images" else minigen.randn(6, 2)


@pytest.mark.parametrize("kind", ["points", "images"])
@pytest.mark.parametrize("loss", LOSSES)
def test_discriminator_step_moves_d_and_leaves_g_untouched_even_given_a_fake_with_a_graph(
        loss, kind):
    minigen.manual_seed(0)
    loop = GANLoop(tiny_config(loss, kind), "cpu")
    g_before, d_before = snapshot(loop.generator), snapshot(loop.discriminator)
    fake = loop.generator(loop.noise(6))  # still attached to G: the step must detach it
    loop.discriminator_step(real_batch(kind), fake)
    assert changed(g_before, loop.generator) == []
    assert all(p.grad is None for p in loop.generator.parameters())
    assert changed(d_before, loop.discriminator) != []


@pytest.mark.parametrize("kind", ["points", "images"])
@pytest.mark.parametrize("loss", LOSSES)
def test_generator_step_moves_g_and_leaves_d_weights_untouched(loss, kind):
    minigen.manual_seed(0)
    loop = GANLoop(tiny_config(loss, kind), "cpu")
    g_before, d_before = snapshot(loop.generator), snapshot(loop.discriminator)
    loop.generator_step(loop.generator(loop.noise(6)))
    assert changed(d_before, loop.discriminator) == []
    assert all(p.grad is None for p in loop.discriminator.parameters())
    assert changed(g_before, loop.generator) != []
    assert all(p.requires_grad for p in loop.discriminator.parameters())  # unfrozen again


@pytest.mark.parametrize("d_steps", [1, 3])
def test_train_step_takes_k_discriminator_steps_per_generator_step_and_logs_both(d_steps):
    minigen.manual_seed(0)
    loop = GANLoop(tiny_config("nonsaturating", "points", d_steps), "cpu")
    scalars = loop.train_step(real_batch("points"), None, 0)
    assert set(scalars) == {"loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scalars.values())
    assert 0 < scalars["d_real"] < 1 and 0 < scalars["d_fake"] < 1
    d_counts = {state["step"] for state in loop.d_optimizer.state.values()}
    g_counts = {state["step"] for state in loop.g_optimizer.state.values()}
    assert d_counts == {d_steps} and g_counts == {1}


def test_sample_leaves_the_generator_and_its_batch_statistics_unchanged():
    minigen.manual_seed(0)
    loop = GANLoop(tiny_config("nonsaturating", "images"), "cpu")
    loop.train_step(real_batch("images"), None, 0)
    before = {name: b.data.copy() for name, b in loop.generator.named_buffers()}
    samples = loop.sample(5)
    assert samples.shape == (5, 1, 8, 8) and isinstance(samples, np.ndarray)
    assert loop.generator.training
    assert all(np.array_equal(before[name], b.data) for name, b in loop.generator.named_buffers())


@pytest.mark.parametrize("kind", ["points", "images"])
def test_spectral_norm_option_normalizes_every_layer_of_d_and_r1_is_logged(kind):
    minigen.manual_seed(0)
    loop = GANLoop(dict(tiny_config("nonsaturating", kind), spectral_norm=True, r1=10.0), "cpu")
    names = list(loop.discriminator.state_dict())
    assert any(name.endswith("weight_u") for name in names)
    assert not any(name.endswith(".weight") for name in names)  # all normalized, no batch norm
    scalars = loop.train_step(real_batch(kind), None, 0)
    assert scalars["r1"] > 0 and math.isfinite(scalars["loss_d"])


def test_sampling_uses_the_ema_of_g_unless_asked_not_to():
    minigen.manual_seed(0)
    loop = GANLoop(dict(tiny_config("nonsaturating", "points"), g_ema_decay=0.9), "cpu")
    for step in range(5):
        loop.train_step(real_batch("points"), None, step)
    raw = {name: p.data.copy() for name, p in loop.generator.named_parameters()}
    draws = {}
    for ema in (True, False):
        minigen.manual_seed(1)
        draws[ema] = loop.sample(4, ema=ema)
    assert not np.allclose(draws[True], draws[False])
    minigen.manual_seed(1)
    with minigen.no_grad():
        expected = loop.generator.eval()(loop.noise(4)).numpy()
    loop.generator.train()
    np.testing.assert_array_equal(draws[False], expected)
    assert all(np.array_equal(raw[name], p.data) for name, p in loop.generator.named_parameters())
    assert set(loop.emas()) == {"generator"}


def test_no_ema_when_the_decay_is_zero_as_in_older_checkpoints():
    assert GANLoop(dict(tiny_config("hinge", "points"), g_ema_decay=0.0), "cpu").emas() == {}
    assert GANLoop(tiny_config("hinge", "points"), "cpu").emas() == {}


# --- exact resumption through the harness ----------------------------------------------------
@pytest.mark.parametrize("dataset, loss, conditional, stabilizers", [
    ("ring8", "wgan-gp", False, {}),
    ("digits", "nonsaturating", False, {}),
    ("digits", "wgan-gp", True, {}),
    ("digits", "nonsaturating", False, dict(spectral_norm=True, r1=10.0)),
])
def test_resumed_run_equals_straight_run_bit_for_bit(tmp_path, dataset, loss, conditional,
                                                     stabilizers):
    def run(out, steps, resume=None):
        options = default_config(GANLoop, dataset=dataset, loss=loss, steps=steps, batch_size=8,
                                 width=8, latent_dim=4, d_steps=2, out=str(out), resume=resume,
                                 checkpoint_every=100, eval_samples=0, conditional=conditional,
                                 **stabilizers)
        train(GANLoop, options, progress=False, say=lambda message: None)

    run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    run(tmp_path / "split", 4, resume=str(tmp_path / "split" / "checkpoint.h5"))
    loops = []
    for name in ("straight", "split"):
        config = default_config(GANLoop, dataset=dataset, loss=loss, width=8, latent_dim=4,
                                conditional=conditional, **stabilizers)
        config.update(data_kind="images" if dataset == "digits" else "points",
                      data_shape=[1, 8, 8] if dataset == "digits" else [2], num_classes=10)
        loop = GANLoop(config, "cpu")
        state = minigen.load_checkpoint(tmp_path / name / "checkpoint.h5", models=loop.models(),
                                        optimizers=loop.optimizers(), ema=loop.emas())
        assert state["step"] == 4
        loops.append(loop)
    for key, model in loops[0].models().items():
        other = loops[1].models()[key].state_dict()
        for name, tensor in model.state_dict().items():
            assert np.array_equal(tensor.data, other[name].data), f"{key}.{name} differs"
    for name, shadow in loops[0].g_ema.shadow.items():
        assert np.array_equal(shadow, loops[1].g_ema.shadow[name]), f"EMA {name} differs"


@pytest.mark.parametrize("kind, expected", [("images", 2e-4), ("points", 1e-3)])
def test_learning_rate_defaults_to_dcgan_for_images_and_larger_for_the_toy_mlps(kind, expected):
    config = default_config(GANLoop, width=8)
    config.update(data_kind=kind, data_shape=[1, 8, 8] if kind == "images" else [2])
    loop = GANLoop(config, "cpu")
    for optimizer in loop.optimizers().values():
        assert optimizer.param_groups[0]["lr"] == expected
        assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)


@pytest.fixture(scope="module")
def ring8_checkpoint(tmp_path_factory):
    """A GAN checkpoint on ring8 after one step of the harness."""
    out = tmp_path_factory.mktemp("gan-ring8")
    options = default_config(GANLoop, dataset="ring8", steps=1, batch_size=8, width=8,
                             out=str(out), eval_samples=0)
    train(GANLoop, options, progress=False, say=lambda message: None)
    return out / "checkpoint.h5"


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_minigen_sample_reads_a_gan_checkpoint(tmp_path, ring8_checkpoint, suffix):
    from minigen import cli
    out = tmp_path / f"samples{suffix}"
    assert cli.main(["sample", str(ring8_checkpoint), "--n", "10", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    if suffix == ".npy":
        assert np.load(out).shape == (10, 2)
