"""The fused group norm (+ SiLU), batch norm and softmax: the Numba kernels against the NumPy
oracle on awkward shapes (tests/norm_cases.py), float32 and float64, contiguous or not; the
fused ops by float64 gradcheck and gradgradcheck; fused and composed ops agreeing; and the
WGAN-GP penalty through a fused group norm and a fused batch norm against PyTorch's.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen import nn
from minigen.gan import gradient_penalty
from minigen.kernels import cpu, cpu_fused_norm, reference
from minigen.ops import fused_norm
from helpers import assert_close, import_torch, non_contiguous, random_array
from norm_cases import BATCH_NORM_CASES, GROUP_NORM_CASES, SOFTMAX_CASES, GroupNormCase

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64],
                                 ids=lambda dtype: np.dtype(dtype).name)
layouts = pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])


def laid_out(array, layout):
    return array if layout == "contiguous" or array is None else non_contiguous(array)


@pytest.fixture
def fused():
    with minigen.fusion(True):
        yield


# --- kernels against the reference ------------------------------------------------------------
@pytest.mark.parametrize("case", GROUP_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cpu_group_norm_matches_reference(case, dtype, layout):
    x, weight, bias, grad_output = case.arrays(np.random.default_rng(1), dtype)
    y, mean, rstd = cpu.group_norm_forward(laid_out(x, layout), case.groups, weight, bias,
                                           1e-5, case.silu)
    expected_y, expected_mean, expected_rstd = reference.group_norm_forward(
        x, case.groups, weight, bias, 1e-5, case.silu)
    assert_close(y, expected_y, dtype)
    assert_close(mean, expected_mean, np.float64)
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-9)
    grads = cpu.group_norm_backward(laid_out(grad_output, layout), laid_out(x, layout), mean,
                                    rstd, case.groups, weight, bias, case.silu)
    expected = reference.group_norm_backward(grad_output, x, mean, rstd, case.groups, weight,
                                             bias, case.silu)
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted, dtype)


@pytest.mark.parametrize("tasks_per_thread", [0, 1, 100], ids=["all_groups_per_task",
                                                             "some_groups_per_task",
                                                             "one_group_per_task"])
@pytest.mark.parametrize("shape", [(1, 12, 3, 5), (8, 12, 4, 4)], ids=["batch_1", "batch_8"])
@dtypes
def test_cpu_group_norm_matches_reference_however_the_groups_are_cut_into_tasks(
        tasks_per_thread, shape, dtype, monkeypatch):
    monkeypatch.setattr(cpu_fused_norm, "TASKS_PER_THREAD", tasks_per_thread)
    case = GroupNormCase("tasks", shape, 6, silu=True)
    x, weight, bias, grad_output = case.arrays(np.random.default_rng(2), dtype)
    y, mean, rstd = cpu.group_norm_forward(x, 6, weight, bias, 1e-5, True)
    assert_close(y, reference.group_norm_forward(x, 6, weight, bias, 1e-5, True)[0], dtype)
    for actual, wanted in zip(
            cpu.group_norm_backward(grad_output, x, mean, rstd, 6, weight, bias, True),
            reference.group_norm_backward(grad_output, x, mean, rstd, 6, weight, bias, True)):
        assert_close(actual, wanted, dtype)


def test_float32_exp_of_the_fused_kernels_is_within_two_ulp_over_its_range():
    limit = float(cpu_fused_norm.EXP_LIMIT)
    t = np.concatenate([np.linspace(-limit, limit, 4001, dtype=np.float32),
                        np.random.default_rng(3).uniform(-1, 1, 1000).astype(np.float32)])
    actual = np.array([cpu_fused_norm._exp_float32(value) for value in t], dtype=np.float64)
    expected = np.exp(t.astype(np.float64))
    assert (np.abs(actual - expected) / expected).max() < 2 * np.finfo(np.float32).eps
    assert np.isnan(cpu_fused_norm._exp_float32(np.float32(np.nan)))


@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cpu_batch_norm_matches_reference_and_updates_running_statistics_alike(case, dtype,
                                                                              layout):
    x, weight, bias, running_mean, running_var, grad_output = case.arrays(
        np.random.default_rng(2), dtype)
    ours = [None if a is None else a.copy() for a in (running_mean, running_var)]
    y, mean, rstd = cpu.batch_norm_forward(laid_out(x, layout), weight, bias, *ours,
                                           case.training, case.momentum, 1e-5)
    expected_y, expected_mean, expected_rstd = reference.batch_norm_forward(
        x, weight, bias, running_mean, running_var, case.training, case.momentum, 1e-5)
    assert_close(y, expected_y, dtype)
    assert_close(mean, expected_mean, np.float64)
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-9)
    for actual, wanted in zip(ours, (running_mean, running_var)):
        if wanted is not None:
            assert_close(actual, wanted, dtype)
    grads = cpu.batch_norm_backward(laid_out(grad_output, layout), laid_out(x, layout), mean,
                                    rstd, weight, case.training)
    expected = reference.batch_norm_backward(grad_output, x, mean, rstd, weight, case.training)
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted, dtype)


@pytest.mark.parametrize("shape, scale", SOFTMAX_CASES.values(), ids=list(SOFTMAX_CASES))
@dtypes
@layouts
def test_cpu_softmax_matches_reference(shape, scale, dtype, layout):
    rng = np.random.default_rng(3)
    x, grad_output = (random_array(rng, shape, dtype) * scale for _ in range(2))
    y = cpu.softmax_forward(laid_out(x, layout))
    assert_close(y, reference.softmax_forward(x), dtype)
    assert np.isfinite(y).all()
    assert_close(cpu.softmax_backward(laid_out(grad_output, layout), laid_out(y, layout)),
                 reference.softmax_backward(grad_output, y), dtype)


def test_reference_group_norm_matches_torch():
    torch = import_torch()
    rng = np.random.default_rng(4)
    x, weight, bias = (random_array(rng, shape) for shape in ((2, 6, 3, 5), (6,), (6,)))
    y, _, _ = reference.group_norm_forward(x, 3, weight, bias, 1e-5, silu=True)
    expected = torch.nn.functional.silu(torch.nn.functional.group_norm(
        torch.tensor(x), 3, torch.tensor(weight), torch.tensor(bias)))
    assert_close(y, expected.numpy())


# --- the fused ops: gradient checks -----------------------------------------------------------
def tensors(rng, *shapes):
    return [minigen.Tensor(rng.standard_normal(shape), requires_grad=True) for shape in shapes]


FUSED_CASES = {
    "group_norm_silu": lambda x, w, b: F.group_norm(x, 2, w, b, activation="silu"),
    "group_norm": lambda x, w, b: F.group_norm(x, 2, w, b),
    "group_norm_silu_without_affine": lambda x, w, b: F.group_norm(x * w.sum() + b.sum(), 4,
                                                                   activation="silu"),
    "batch_norm_training": lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
    "batch_norm_eval": lambda x, w, b: F.batch_norm(
        x, minigen.tensor(np.array([0.5, -1.0, 2.0, 0.1])),
        minigen.tensor(np.array([1.5, 0.25, 4.0, 0.7])), w, b, training=False),
    "softmax_last_axis": lambda x, w, b: F.softmax(x * w.reshape(1, 4, 1, 1) + b.sum(), dim=-1),
}


def test_fused_cases_really_take_the_fused_ops(fused):
    x, w, b = tensors(np.random.default_rng(5), (2, 4, 3, 3), (4,), (4,))
    for name, expected in [("group_norm", fused_norm.GroupNormActivation),
                           ("batch_norm_training", fused_norm.BatchNorm),
                           ("softmax_last_axis", minigen.ops.activations.Softmax)]:
        out = FUSED_CASES[name](x, w, b)
        assert isinstance(out.grad_fn, expected) and getattr(out.grad_fn, "fused", True)


@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_op_passes_gradcheck_in_float64(name, fused):
    x, w, b = tensors(np.random.default_rng(6), (2, 4, 3, 3), (4,), (4,))
    assert minigen.gradcheck(FUSED_CASES[name], (x, w, b))


@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_op_passes_gradgradcheck_in_float64(name, fused):
    x, w, b = tensors(np.random.default_rng(7), (2, 4, 2, 3), (4,), (4,))
    assert minigen.gradgradcheck(FUSED_CASES[name], (x, w, b))


# --- fused and composed agree -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_and_composed_ops_agree_in_float32(name):
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((3, 4, 5, 5), (4,), (4,))]
    weighting = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    results = []
    for enabled in (True, False):
        with minigen.fusion(enabled):
            inputs = [minigen.Tensor(a, requires_grad=True) for a in arrays]
            out = FUSED_CASES[name](*inputs)
            (out * minigen.Tensor(weighting)).sum().backward()
            results.append([out.detach().numpy()] + [t.grad.numpy() for t in inputs])
    for fused_result, composed_result in zip(*results):
        assert_close(fused_result, composed_result, np.float32)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_layer_tracks_the_same_running_statistics_fused_or_not(training):
    x = minigen.Tensor(np.random.default_rng(9).standard_normal((6, 3, 4, 4)).astype(np.float32)
                       * 3 + 1)
    layers = []
    for enabled in (True, False):
        minigen.manual_seed(0)
        layer = nn.BatchNorm2d(3, momentum=None)
        layer.train(training)
        with minigen.fusion(enabled):
            for _ in range(3):
                out = layer(x)
        layers.append((out.detach().numpy(), layer.running_mean.numpy(), layer.running_var.numpy()))
    for fused_result, composed_result in zip(*layers):
        assert_close(fused_result, composed_result, np.float32)


def test_unet_gives_the_same_noise_prediction_and_gradients_fused_or_not():
    from minigen.models.unet import UNet
    rng = np.random.default_rng(10)
    x = minigen.Tensor(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    t = minigen.tensor(np.array([3, 17]))
    minigen.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2))
    results = []
    for enabled in (True, False):
        model.zero_grad()
        with minigen.fusion(enabled):
            out = model(x, t)
            (out * out).mean().backward()
        results.append([out.detach().numpy()] + [p.grad.numpy() for p in model.parameters()])
    for fused_result, composed_result in zip(*results):
        np.testing.assert_allclose(fused_result, composed_result, rtol=1e-3, atol=1e-5)


def test_group_norm_layer_with_silu_says_so_and_refuses_other_activations():
    layer = nn.GroupNorm(2, 4, activation="silu")
    assert "activation='silu'" in repr(layer)
    assert set(layer.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="activation must be None or 'silu', not 'relu'"):
        nn.GroupNorm(2, 4, activation="relu")
    with pytest.raises(ValueError, match="activation must be None or 'silu', not 'gelu'"):
        F.group_norm(minigen.randn(2, 4, 3, 3), 2, activation="gelu")


# --- WGAN-GP through the fused norms ----------------------------------------------------------
def norm_critic(weights, norm):
    """D(x) = conv(act(norm(conv(x, w1, stride 2))), w2) summed to one score, in either library;
    norm "group": SiLU(GroupNorm(2)) (fused as one op here), "batch": LeakyReLU(BatchNorm)."""
    w1, w2, gamma, beta = weights
    if hasattr(w1, "detach") and not isinstance(w1, minigen.Tensor):
        tf = __import__("torch").nn.functional

        def normalise(h):
            if norm == "group":
                return tf.silu(tf.group_norm(h, 2, gamma, beta))
            return tf.leaky_relu(tf.batch_norm(h, None, None, gamma, beta, training=True), 0.2)
        return lambda x: tf.conv2d(normalise(tf.conv2d(x, w1, stride=2, padding=1)),
                                   w2).reshape(x.shape[0], 1)

    def normalise(h):
        if norm == "group":
            return F.group_norm(h, 2, gamma, beta, activation="silu")
        return F.leaky_relu(F.batch_norm(h, None, None, gamma, beta, training=True), 0.2)
    return lambda x: F.conv2d(normalise(F.conv2d(x, w1, stride=2, padding=1)),
                              w2).reshape(x.shape[0], 1)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_wgan_gp_penalty_through_a_fused_norm_matches_pytorch(norm, fused):
    torch = import_torch()
    rng = np.random.default_rng(11)
    shapes = [(4, 1, 4, 4), (1, 4, 3, 3), (4,), (4,)]
    weights = [rng.standard_normal(shape) * 0.5 for shape in shapes]
    weights[2] += 1.0
    real, fake = (rng.standard_normal((5, 1, 6, 6)) for _ in range(2))
    minigen.manual_seed(3)
    eps = minigen.rand(5, 1, 1, 1, dtype=np.float64).numpy()
    minigen.manual_seed(3)  # gradient_penalty draws the same eps
    ours = [minigen.tensor(w, requires_grad=True) for w in weights]
    penalty = gradient_penalty(norm_critic(ours, norm), minigen.tensor(real), minigen.tensor(fake))
    penalty.backward()

    theirs = [torch.tensor(w, requires_grad=True) for w in weights]
    x_hat = torch.tensor(eps * real + (1 - eps) * fake, requires_grad=True)
    (grad_x,) = torch.autograd.grad(norm_critic(theirs, norm)(x_hat).sum(), x_hat,
                                    create_graph=True)
    expected = ((grad_x.reshape(5, -1).norm(dim=1) - 1) ** 2).mean()
    expected.backward()
    assert_close(penalty.item(), expected.item(), np.float64)
    for param, reference_param in zip(ours, theirs):
        # The batch-norm critic's grad_x does not depend on beta (LeakyReLU is piecewise
        # linear): None here and zeros in PyTorch both mean zero.
        ours_grad = np.zeros_like(param.data) if param.grad is None else param.grad.numpy()
        assert_close(ours_grad, reference_param.grad.numpy(), np.float64)


def test_fused_group_norm_takes_an_empty_batch(fused):
    x = minigen.Tensor(np.zeros((0, 4, 3, 3), np.float32), requires_grad=True)
    out = F.group_norm(x, 2, activation="silu")
    out.sum().backward()
    assert out.shape == x.grad.shape == (0, 4, 3, 3)


def test_dtypes_without_fused_kernels_take_the_composed_ops(fused):
    x = minigen.Tensor(np.random.default_rng(13).standard_normal((2, 4, 3, 3)).astype(np.float16),
                       requires_grad=True)
    out = F.group_norm(x, 2, activation="silu")
    assert out.dtype == np.float16
    assert out.grad_fn is not None and not isinstance(out.grad_fn, fused_norm.GroupNormActivation)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_kernels_pass_a_nan_on_as_the_reference_does(dtype):
    """A NaN must not vanish inside a fused kernel: a run stops on a loss that turns NaN."""
    x = np.random.default_rng(14).standard_normal((2, 4, 3, 3)).astype(dtype)
    x[1, 2, 1, 1] = np.nan
    for actual, expected in [
            (cpu.group_norm_forward(x, 2, None, None, 1e-5, True)[0],
             reference.group_norm_forward(x, 2, None, None, 1e-5, True)[0]),
            (cpu.softmax_forward(x), reference.softmax_forward(x)),
            (cpu.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)[0],
             reference.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)[0])]:
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        assert np.isnan(actual).any()
