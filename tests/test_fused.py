"""The fused kernels and what uses them: bias_act against the oracle on awkward shapes and to
second order; the multi-tensor optimizer, EMA and clipping kernels against the oracle to the
bit; the optimizers, the EMA and clip_grad_norm_ equal with fusion on and off; and a few DDPM
and DCGAN training steps giving the same weights both ways within float32 tolerance."""
from __future__ import annotations

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen import nn, optim
from minigen.kernels import cpu, cpu_fused, reference
from helpers import TOLERANCES, assert_close, non_contiguous

DTYPES = [np.float32, np.float64]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
ACTS = ["linear", "relu", "leaky_relu", "silu"]
acts = pytest.mark.parametrize("act", ACTS)
# (shape, dim): odd sizes, one sample, a linear layer's (N, C) and (N, L, C), a 1-d input.
BIAS_CASES = [((3, 5, 7, 9), 1), ((1, 4, 3, 3), 1), ((6, 11), 1), ((2, 7, 13), 2), ((5,), 0),
              ((64, 32, 16, 16), 1)]
bias_cases = pytest.mark.parametrize("shape, dim", BIAS_CASES, ids=str)
# threads: "kernel" sends every size through the Numba kernels, "as_is" keeps the cut-over
# below which the reference code runs.
paths = pytest.mark.parametrize("path", ["kernel", "as_is"])
PARAM_SHAPES = [(3, 5), (7,), (1,), (2, 3, 3, 3), (0,), (40000,)]


@pytest.fixture
def fused_on():
    with minigen.fusion(True):
        yield


def with_path(monkeypatch, path):
    if path == "kernel":
        monkeypatch.setattr(cpu_fused, "_by_reference", lambda x, bias, dim, act: False)


# ---- add: the threaded a + b ------------------------------------------------------------------
@pytest.mark.parametrize("a_shape, b_shape", [
    ((64, 32, 8, 8), (64, 32, 8, 8)),     # a residual add
    ((64, 32, 8, 8), (64, 32, 1, 1)),     # a time embedding per (n, c)
    ((64, 32, 1, 1), (64, 32, 8, 8)),     # the same the other way round
    ((3, 70000), (3, 1)),                 # few rows
    ((40000,), (40000,)),                 # one dimension
    ((64, 32, 8, 8), (32, 1, 1)),         # broadcast NumPy's way: not a per-(n, c) shape
    ((64, 32, 8, 8), (1, 32, 8, 8)),
    ((5, 7), (5, 7)),                     # small: NumPy's add
], ids=str)
@dtypes
def test_cpu_add_matches_numpy_to_the_bit(a_shape, b_shape, dtype):
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(shape).astype(dtype) for shape in (a_shape, b_shape))
    actual = cpu.add(a, b)
    assert actual.dtype == dtype and actual.shape == np.broadcast_shapes(a_shape, b_shape)
    np.testing.assert_array_equal(actual, reference.add(a, b))


def test_cpu_add_of_mixed_dtypes_and_non_contiguous_arrays_is_numpys():
    a = np.ones((64, 64, 8), np.float32)
    for b in (np.ones((64, 64, 8)), np.ones((64, 8, 64), np.float32).transpose(0, 2, 1)):
        np.testing.assert_array_equal(cpu.add(a, b), a + b)
        assert cpu.add(a, b).dtype == (a + b).dtype


# ---- bias_act kernels ---------------------------------------------------------------------
@bias_cases
@acts
@dtypes
@paths
def test_cpu_bias_act_matches_reference_to_the_bit(shape, dim, act, dtype, path, monkeypatch):
    with_path(monkeypatch, path)
    rng = np.random.default_rng(1)
    x, grad_output = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    bias = rng.standard_normal(shape[dim]).astype(dtype)
    y = cpu.bias_act_forward(x, bias, dim, act, 0.2)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, reference.bias_act_forward(x, bias, dim, act, 0.2))
    grad_x, grad_bias = cpu.bias_act_backward(grad_output, x, bias, dim, act, 0.2)
    expected_x, expected_bias = reference.bias_act_backward(grad_output, x, bias, dim, act, 0.2)
    np.testing.assert_array_equal(grad_x, expected_x)
    assert grad_bias.dtype == dtype
    assert_close(grad_bias, expected_bias, dtype)  # float64 sums in another order


@acts
@dtypes
@paths
def test_cpu_bias_act_without_bias_and_on_non_contiguous_inputs(act, dtype, path, monkeypatch):
    with_path(monkeypatch, path)
    rng = np.random.default_rng(2)
    x, grad_output = (non_contiguous(rng.standard_normal((4, 6, 5)).astype(dtype))
                      for _ in range(2))
    np.testing.assert_array_equal(cpu.bias_act_forward(x, None, 1, act, 0.1),
                                  reference.bias_act_forward(x, None, 1, act, 0.1))
    grad_x, grad_bias = cpu.bias_act_backward(grad_output, x, None, 1, act, 0.1)
    assert grad_bias is None
    np.testing.assert_array_equal(grad_x,
                                  reference.bias_act_backward(grad_output, x, None, 1, act, 0.1)[0])


@paths
def test_cpu_bias_act_on_an_empty_batch(path, monkeypatch):
    with_path(monkeypatch, path)
    x = np.zeros((0, 3, 2, 2), dtype=np.float32)
    bias = np.ones(3, dtype=np.float32)
    assert cpu.bias_act_forward(x, bias, 1, "silu", 0.0).shape == x.shape
    grad_x, grad_bias = cpu.bias_act_backward(x, x, bias, 1, "silu", 0.0)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_bias, np.zeros(3, dtype=np.float32))


def test_cpu_bias_act_names_a_bad_activation_and_a_bias_that_does_not_fit():
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="act must be one of"):
        cpu.bias_act_forward(x, None, 1, "gelu", 0.0)
    with pytest.raises(ValueError, match="does not fit axis 1"):
        cpu_fused._layout(x, np.zeros(4, dtype=np.float32), 1)


# ---- bias_act, the op -----------------------------------------------------------------------
@acts
@pytest.mark.parametrize("shape, dim", [((2, 3, 4, 4), 1), ((5, 6), -1), ((2, 3, 4), 1)],
                         ids=str)
def test_bias_act_passes_gradcheck_and_gradgradcheck_in_float64(act, shape, dim, fused_on):
    rng = np.random.default_rng(3)
    # Keep z = x + b away from relu's kink, where central differences are meaningless.
    x = rng.standard_normal(shape)
    x += np.sign(x) * 0.1
    x = minigen.tensor(x, requires_grad=True)
    bias = minigen.tensor(np.zeros(shape[dim]), requires_grad=True)

    def fn(x, bias):
        return F.bias_act(x, bias, dim, act, 0.2)
    assert minigen.gradcheck(fn, [x, bias])
    assert minigen.gradgradcheck(fn, [x, bias])


@acts
def test_bias_act_without_bias_passes_gradcheck_and_gradgradcheck(act, fused_on):
    x = minigen.tensor(np.array([[-1.3, 0.4, 2.1], [0.7, -0.2, -2.5]]), requires_grad=True)
    assert minigen.gradcheck(lambda x: F.bias_act(x, None, act=act, alpha=0.3), [x])
    assert minigen.gradgradcheck(lambda x: F.bias_act(x, None, act=act, alpha=0.3), [x])


@acts
@dtypes
def test_bias_act_gives_the_same_values_and_gradients_with_fusion_on_and_off(act, dtype):
    rng = np.random.default_rng(4)
    x0, g0 = (rng.standard_normal((8, 6, 40, 40)).astype(dtype) for _ in range(2))
    b0 = rng.standard_normal(6).astype(dtype)
    results = []
    for enabled in (True, False):
        with minigen.fusion(enabled):
            x, bias = (minigen.tensor(a, requires_grad=True) for a in (x0, b0))
            y = F.bias_act(x, bias, 1, act, 0.2)
            y.backward(minigen.tensor(g0))
            results.append((y.detach().numpy(), x.grad.numpy(), bias.grad.numpy()))
    for fused, composed in zip(*results):
        assert fused.dtype == dtype
        assert_close(fused, composed, dtype)


def test_bias_act_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x0, b0 = rng.standard_normal((3, 4, 5, 5)), rng.standard_normal(4)
    for act, torch_act in (("relu", torch.relu), ("silu", torch.nn.functional.silu),
                           ("leaky_relu", lambda z: torch.nn.functional.leaky_relu(z, 0.2))):
        x, bias = (minigen.tensor(a, requires_grad=True) for a in (x0, b0))
        F.bias_act(x, bias, 1, act, 0.2).sum().backward()
        tx, tb = (torch.tensor(a, requires_grad=True) for a in (x0, b0))
        torch_act(tx + tb.reshape(1, -1, 1, 1)).sum().backward()
        assert_close(x.grad.numpy(), tx.grad.numpy())
        assert_close(bias.grad.numpy(), tb.grad.numpy())


def test_bias_act_names_a_bias_that_does_not_fit_and_a_bad_activation():
    x = minigen.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\) but the input has 3 channels"):
        F.bias_act(x, minigen.zeros(4))
    with pytest.raises(ValueError, match="act must be one of"):
        F.bias_act(x, act="swish")
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        F.bias_act(x, minigen.zeros(4), dim=3)


def test_relu_of_an_integer_tensor_still_works_with_fusion_on(fused_on):
    np.testing.assert_array_equal(F.relu(minigen.tensor([-2, 3])).numpy(), [0, 3])


# ---- multi-tensor update kernels --------------------------------------------------------------
def parameters(rng, dtype, shapes=PARAM_SHAPES):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def copies(arrays):
    return [a.copy() for a in arrays]


def assert_all_equal(actual, expected):
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(a, e)


@dtypes
@pytest.mark.parametrize("decoupled, amsgrad, maximize, weight_decay",
                         [(False, False, False, 0.0), (False, True, False, 0.1),
                          (True, False, False, 0.1), (True, True, True, 0.01)])
def test_cpu_adam_update_equals_the_reference_to_the_bit(dtype, decoupled, amsgrad, maximize,
                                                        weight_decay):
    rng = np.random.default_rng(6)
    params, grads = parameters(rng, dtype), parameters(rng, dtype)
    states = [[np.zeros_like(p) for p in params] for _ in range(3)]
    ours, our_states = copies(params), [copies(s) for s in states]
    for step in (1, 2, 3):
        settings = ([step] * len(params), 0.01, 0.9, 0.99, 1e-8, weight_decay, decoupled,
                    amsgrad, maximize)
        reference.adam_update(params, grads, states[0], states[1],
                              states[2] if amsgrad else None, *settings)
        cpu.adam_update(ours, grads, our_states[0], our_states[1],
                        our_states[2] if amsgrad else None, *settings)
    assert_all_equal(ours, params)
    for ours_state, state in zip(our_states, states):
        assert_all_equal(ours_state, state)


@dtypes
@pytest.mark.parametrize("momentum, dampening, nesterov, maximize",
                         [(0.0, 0.0, False, False), (0.9, 0.0, True, False),
                          (0.8, 0.3, False, True)])
def test_cpu_sgd_update_equals_the_reference_to_the_bit(dtype, momentum, dampening, nesterov,
                                                       maximize):
    rng = np.random.default_rng(7)
    params, grads = parameters(rng, dtype), parameters(rng, dtype)
    buffers = [np.zeros_like(p) for p in params]
    ours, our_buffers = copies(params), copies(buffers)
    for step in range(3):
        first = [step == 0] * len(params)
        settings = (0.05, momentum, dampening, 0.01, nesterov, maximize)
        reference.sgd_update(params, grads, buffers, first, *settings)
        cpu.sgd_update(ours, grads, our_buffers, first, *settings)
    assert_all_equal(ours, params)
    assert_all_equal(our_buffers, buffers)


def test_cpu_updates_take_non_contiguous_and_mixed_dtype_arrays_through_the_reference():
    rng = np.random.default_rng(8)
    params = [rng.standard_normal((4, 6)).astype(np.float32), non_contiguous(np.ones((3, 4))),
              rng.standard_normal(5).astype(np.float64)]
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    grads[0] = non_contiguous(np.ascontiguousarray(grads[0]))  # a strided gradient
    expected, ours = copies(params), [p.copy() if p.flags.c_contiguous else
                                      non_contiguous(p.copy()) for p in params]
    moments = [[np.zeros_like(p) for p in params] for _ in range(4)]
    reference.adam_update(expected, grads, moments[0], moments[1], None, [1] * 3, 0.1, 0.9, 0.999,
                          1e-8, 0.0, True, False, False)
    cpu.adam_update(ours, grads, moments[2], moments[3], None, [1] * 3, 0.1, 0.9, 0.999, 1e-8,
                    0.0, True, False, False)
    assert_all_equal(ours, expected)
    assert not ours[1].flags.c_contiguous  # updated in place, where it lives


@dtypes
def test_cpu_ema_update_equals_the_reference_to_the_bit(dtype):
    rng = np.random.default_rng(9)
    shadows, params = parameters(rng, dtype), parameters(rng, dtype)
    ours = copies(shadows)
    reference.ema_update(shadows, params, 0.995)
    cpu.ema_update(ours, params, 0.995)
    assert_all_equal(ours, shadows)


@dtypes
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_cpu_grad_norm_and_scaling_match_the_reference(dtype, norm_type):
    rng = np.random.default_rng(10)
    grads = parameters(rng, dtype)
    np.testing.assert_allclose(cpu.grad_norm(grads, norm_type),
                               reference.grad_norm(grads, norm_type), rtol=1e-12)
    assert cpu.grad_norm([], norm_type) == 0
    coefficient = np.float64(0.3)
    scaled = cpu.scale_grads(grads, coefficient)
    assert_all_equal(scaled, reference.scale_grads(grads, coefficient))
    assert all(s is not g for s, g in zip(scaled, grads))


# ---- optimizers, EMA and clipping with fusion on and off ---------------------------------------
OPTIMIZERS = {
    "sgd": (optim.SGD, dict(lr=0.05)),
    "sgd_momentum_nesterov_decay": (optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True,
                                                    weight_decay=0.1)),
    "sgd_dampening_maximize": (optim.SGD, dict(lr=0.01, momentum=0.8, dampening=0.3,
                                               maximize=True)),
    "adam": (optim.Adam, dict(lr=0.05)),
    "adam_decay_amsgrad": (optim.Adam, dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1,
                                            amsgrad=True)),
    "adamw": (optim.AdamW, dict(lr=0.05, weight_decay=0.1)),
    "adamw_maximize": (optim.AdamW, dict(lr=0.01, maximize=True)),
}


def run_optimizer(make, kwargs, dtype, enabled, steps=5, state=None):
    """Five steps of a curved loss over parameters of PARAM_SHAPES (one without a gradient);
    returns the parameters and the optimizer."""
    rng = np.random.default_rng(11)
    # Halved, so that no step of the quartic loss overshoots into overflow.
    params = [nn.Parameter(minigen.tensor(a * 0.5)) for a in parameters(rng, dtype)]
    targets = [minigen.tensor(a * 0.5) for a in parameters(rng, dtype)]
    optimizer = make(params, **kwargs)
    if state is not None:
        optimizer.load_state_dict(state)
    with minigen.fusion(enabled):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = sum((((p - t) ** 2) * (1 + p * p)).sum() for p, t in zip(params[1:], targets[1:]))
            loss.backward()
            optimizer.step()
    return [p.detach().numpy() for p in params], optimizer


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@dtypes
def test_optimizers_give_the_same_bits_with_fusion_on_and_off(name, dtype):
    make, kwargs = OPTIMIZERS[name]
    fused, fused_optimizer = run_optimizer(make, kwargs, dtype, True)
    plain, plain_optimizer = run_optimizer(make, kwargs, dtype, False)
    assert_all_equal(fused, plain)
    np.testing.assert_array_equal(fused[0], run_optimizer(make, kwargs, dtype, True, 0)[0][0])
    fused_state, plain_state = fused_optimizer.state_dict(), plain_optimizer.state_dict()
    assert sorted(fused_state["state"]) == sorted(plain_state["state"])
    for index, values in plain_state["state"].items():
        for key, value in values.items():
            np.testing.assert_array_equal(fused_state["state"][index][key], value)


@pytest.mark.parametrize("name", ["sgd_momentum_nesterov_decay", "adam_decay_amsgrad", "adamw"])
def test_a_fused_optimizer_resumes_from_an_unfused_state_dict_bit_for_bit(name):
    make, kwargs = OPTIMIZERS[name]
    straight, _ = run_optimizer(make, kwargs, np.float32, True, steps=6)
    _, first_half = run_optimizer(make, kwargs, np.float32, False, steps=3)
    state = {"state": {i: {k: np.array(v) if hasattr(v, "shape") else v for k, v in s.items()}
                       for i, s in first_half.state_dict()["state"].items()},
             "param_groups": first_half.state_dict()["param_groups"]}
    # The second half starts from the first half's weights: replay them, then resume.
    rng = np.random.default_rng(11)
    params = [nn.Parameter(minigen.tensor(a * 0.5)) for a in parameters(rng, np.float32)]
    targets = [minigen.tensor(a * 0.5) for a in parameters(rng, np.float32)]
    for param, trained in zip(params, first_half.param_groups[0]["params"]):
        param.data[...] = trained.data
    optimizer = make(params, **kwargs)
    optimizer.load_state_dict(state)
    with minigen.fusion(True):
        for _ in range(3):
            optimizer.zero_grad()
            sum((((p - t) ** 2) * (1 + p * p)).sum()
                for p, t in zip(params[1:], targets[1:])).backward()
            optimizer.step()
    assert_all_equal([p.detach().numpy() for p in params], straight)


def test_ema_gives_the_same_bits_with_fusion_on_and_off():
    results = []
    for enabled in (True, False):
        minigen.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 3))
        ema = optim.EMA(model, decay=0.9, warmup=True)
        with minigen.fusion(enabled):
            for step in range(3):
                for param in model.parameters():
                    param.data += 0.1 * (step + 1)
                ema.update()
        results.append([ema.shadow[name] for name in sorted(ema.shadow)])
    assert_all_equal(*results)


@pytest.mark.parametrize("max_norm, norm_type", [(0.5, 2.0), (100.0, 2.0), (0.3, 1.0),
                                                 (0.2, float("inf")), (0.4, 3.0)])
def test_clip_grad_norm_agrees_with_fusion_on_and_off(max_norm, norm_type):
    results = []
    for enabled in (True, False):
        rng = np.random.default_rng(12)
        params = [nn.Parameter(minigen.tensor(a)) for a in parameters(rng, np.float32)]
        for param in params[1:]:
            param.grad = minigen.tensor(rng.standard_normal(param.shape).astype(np.float32))
        shared = params[1].grad
        before = shared.numpy().copy()
        with minigen.fusion(enabled):
            total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        np.testing.assert_array_equal(shared.numpy(), before)  # never scaled in place
        clipped = float(total.numpy()) + 1e-6 > max_norm
        assert (params[1].grad is not shared) == clipped  # left as it is when none is clipped
        assert params[0].grad is None and total.dtype == np.float32
        results.append([total.numpy()] + [p.grad.numpy() for p in params[1:]])
    for fused, plain in zip(*results):
        np.testing.assert_allclose(fused, plain, **TOLERANCES[np.dtype(np.float32)])


@pytest.mark.parametrize("value", [1.5, 1e30, np.inf, np.nan], ids=["normal", "large", "inf",
                                                                  "nan"])
def test_the_loops_gradient_norm_agrees_with_fusion_on_and_off(value):
    from minigen.loop import gradient_norm
    rng = np.random.default_rng(5)
    params = [minigen.Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
              for shape in ((3, 4), (50000,), (7,))]
    for param in params:
        param.grad = minigen.Tensor(rng.standard_normal(param.shape).astype(np.float32))
    params[1].grad.data[17] = value
    norms = []
    for enabled in (True, False):
        with minigen.fusion(enabled):
            norms.append(gradient_norm(params))
    np.testing.assert_allclose(norms[0], norms[1], rtol=1e-12)


def test_clip_grad_norm_still_raises_on_a_non_finite_norm_with_fusion_on(fused_on):
    param = nn.Parameter(minigen.tensor(np.ones(3, dtype=np.float32)))
    param.grad = minigen.tensor(np.array([1.0, np.inf, 0.0], dtype=np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_([param], 1.0, error_if_nonfinite=True)


# ---- whole training steps ---------------------------------------------------------------------
def train_steps(loop_name: str, enabled: bool, steps: int = 3) -> dict:
    from minigen.ddpm import DDPMLoop
    from minigen.gan import GANLoop
    from minigen.run import default_config
    loop_cls = {"ddpm": DDPMLoop, "gan": GANLoop}[loop_name]
    overrides = dict(batch_size=8)
    if loop_name == "ddpm":
        overrides.update(base_channels=8, grad_clip=1.0)
    else:
        overrides.update(width=8)
    with minigen.fusion(enabled):
        minigen.manual_seed(0)
        config = default_config(loop_cls, **overrides)
        config.update(data_kind="images", data_shape=[1, 8, 8])
        loop = loop_cls(config, "cpu")
        images = minigen.tensor(np.random.default_rng(13).uniform(-1, 1, (8, 1, 8, 8))
                                .astype(np.float32))
        for step in range(steps):
            loop.train_step(images, None, step)
    weights = {}
    for model_name, model in loop.models().items():
        for name, value in model.state_dict().items():
            weights[f"{model_name}.{name}"] = value.numpy()
    for ema_name, ema in loop.emas().items():
        weights.update({f"ema.{ema_name}.{name}": value for name, value in ema.shadow.items()})
    return weights


@pytest.mark.parametrize("loop_name", ["ddpm", "gan"])
def test_training_steps_give_the_same_weights_with_fusion_on_and_off(loop_name):
    fused, plain = train_steps(loop_name, True), train_steps(loop_name, False)
    start = train_steps(loop_name, False, steps=0)
    assert sorted(fused) == sorted(plain)
    moves = {name: np.abs(plain[name] - start[name]).max() for name in plain}
    assert sum(move > 0 for move in moves.values()) > len(plain) // 2  # the steps trained
    # Adam divides each gradient by its own size, so a float32 rounding difference in a
    # gradient near zero (a bias summed in another order) moves a weight by up to a step;
    # the weights must still agree to a small part of what three steps moved them.
    largest_move = max(moves.values())
    for name in plain:
        assert fused[name].dtype == plain[name].dtype, name
        np.testing.assert_allclose(fused[name], plain[name], rtol=1e-4, atol=0.2 * largest_move,
                                   err_msg=name)


def unet_and_dcgan_gradients(enabled: bool) -> dict:
    """Loss gradients of a small U-Net and of a DCGAN generator and discriminator."""
    from minigen.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init
    from minigen.models.unet import UNet
    rng = np.random.default_rng(14)
    images = minigen.tensor(rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32))
    noise = minigen.tensor(rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    z = minigen.tensor(rng.standard_normal((4, 16)).astype(np.float32))
    with minigen.fusion(enabled):
        minigen.manual_seed(0)
        unet = UNet(1, 8, (1, 2), 1)
        generator = dcgan_init(DCGANGenerator(16, 1, 8, 8))
        discriminator = dcgan_init(DCGANDiscriminator(1, 8, 8))
        F.mse_loss(unet(images, minigen.tensor(np.array([3, 50, 400, 999]))), noise).backward()
        discriminator(generator(z)).mean().backward()
    grads = {}
    for prefix, model in (("unet", unet), ("G", generator), ("D", discriminator)):
        grads.update({f"{prefix}.{name}": p.grad.numpy() for name, p in model.named_parameters()})
    return grads


def test_unet_and_dcgan_gradients_agree_with_fusion_on_and_off():
    fused, plain = unet_and_dcgan_gradients(True), unet_and_dcgan_gradients(False)
    assert sorted(fused) == sorted(plain)
    # A bias before a norm layer has a gradient of ~0 that is all rounding, so the absolute
    # tolerance follows each model's largest gradient.
    scale = {prefix: max(np.abs(g).max() for name, g in plain.items() if name.startswith(prefix))
             for prefix in ("unet.", "G.", "D.")}
    for name in plain:
        np.testing.assert_allclose(fused[name], plain[name], rtol=1e-4,
                                   atol=1e-6 * scale[name.split(".")[0] + "."], err_msg=name)


def test_an_optimizer_subclass_with_only_a_per_parameter_update_still_steps(fused_on):
    class SignDescent(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        def _update(self, param, grad, state, group):
            param.data -= group["lr"] * np.sign(grad)

    param = nn.Parameter(minigen.tensor(np.array([1.0, -2.0])))
    param.grad = minigen.tensor(np.array([0.5, -3.0]))
    SignDescent([param]).step()
    np.testing.assert_allclose(param.detach().numpy(), [0.9, -1.9])


def test_small_fused_calls_stay_on_the_calling_thread_and_the_thread_count_comes_back():
    import numba
    previous = numba.get_num_threads()
    seen = []
    with cpu_fused._Threads(10):
        seen.append(numba.get_num_threads())
    with cpu_fused._Threads(10**12):
        seen.append(numba.get_num_threads())
    assert seen == [1, previous]
    assert numba.get_num_threads() == previous


def test_remembered_address_tables_follow_a_new_array_even_at_a_reused_id():
    shadows = [np.ones(50000, dtype=np.float32)]
    cpu.ema_update(shadows, [np.zeros(50000, dtype=np.float32)], 0.5)  # freed right after
    replacement = [np.full(50000, 3.0, dtype=np.float32)]  # often at the freed array's id
    cpu.ema_update(shadows, replacement, 0.5)
    np.testing.assert_array_equal(shadows[0], np.full(50000, 1.75, dtype=np.float32))
    cpu.ema_update(shadows, replacement, 0.5)  # the same arrays again: the remembered table
    np.testing.assert_array_equal(shadows[0], np.full(50000, 2.375, dtype=np.float32))


@pytest.mark.parametrize("act", ["leaky_relu", "silu"])
def test_conv_with_bias_then_activation_has_second_derivatives_with_fusion_on(act, fused_on):
    """The gradient-penalty path: conv2d's bias and the activation after it both go through
    bias_act, whose create_graph backward must itself be differentiable."""
    rng = np.random.default_rng(15)
    x, weight, bias = (minigen.tensor(rng.standard_normal(shape), requires_grad=True)
                       for shape in ((2, 3, 5, 5), (4, 3, 3, 3), (4,)))

    def critic(x, weight, bias):
        return F.bias_act(F.conv2d(x, weight, bias, padding=1), None, act=act, alpha=0.2)
    assert minigen.gradgradcheck(critic, [x, weight, bias])


def test_the_remembered_kernel_backend_of_an_array_type_ends_with_its_library_entry(monkeypatch):
    from minigen import kernels

    class Foreign:
        pass
    Foreign.__module__ = "foreignlib.core"
    monkeypatch.setitem(kernels._BACKENDS, "foreignlib", "cpu")
    assert kernels.for_array(Foreign()) is cpu
    monkeypatch.delitem(kernels._BACKENDS, "foreignlib")
    with pytest.raises(TypeError, match="no kernel backend for arrays of type foreignlib"):
        kernels.for_array(Foreign())
