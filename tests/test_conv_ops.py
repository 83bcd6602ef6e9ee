"""The differentiable conv, pool and upsample ops (minigen.functional) on the CPU kernels:
first and second order gradient checks in float64, and values and gradients against
torch.nn.functional where PyTorch is installed."""
import numpy as np
import pytest

import minigen
from minigen import functional as F

CONV_CASES = {
    "3x3_padding_1": dict(x=(2, 3, 5, 5), weight=(4, 3, 3, 3), kwargs=dict(padding=1)),
    "stride_2_padding_1_odd": dict(x=(1, 2, 5, 7), weight=(3, 2, 3, 3), kwargs=dict(stride=2, padding=1)),
    "1x1": dict(x=(2, 3, 3, 3), weight=(2, 3, 1, 1), kwargs={}),
    "dilation_2": dict(x=(1, 2, 6, 6), weight=(2, 2, 3, 3), kwargs=dict(dilation=2, padding=2)),
    "groups_2": dict(x=(1, 4, 4, 4), weight=(6, 2, 3, 3), kwargs=dict(groups=2, padding=1)),
    "depthwise": dict(x=(1, 3, 4, 5), weight=(3, 1, 3, 3), kwargs=dict(groups=3, padding=1)),
}

TRANSPOSE_CASES = {
    "stride_2_padding_1_output_padding_1": dict(x=(1, 3, 3, 4), weight=(3, 2, 3, 3),
                                                kwargs=dict(stride=2, padding=1, output_padding=1)),
    "4x4_stride_2_dcgan": dict(x=(2, 2, 2, 2), weight=(2, 3, 4, 4), kwargs=dict(stride=2, padding=1)),
    "groups_2": dict(x=(1, 4, 3, 3), weight=(4, 1, 3, 3), kwargs=dict(groups=2)),
}

POOL_CASES = {
    "max_2x2": (F.max_pool2d, dict(kernel_size=2)),
    "max_3x3_stride_2_padding_1": (F.max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
    "avg_2x2": (F.avg_pool2d, dict(kernel_size=2)),
    "avg_3x3_stride_2_padding_1": (F.avg_pool2d, dict(kernel_size=3, stride=2, padding=1)),
    "nearest_x2": (F.interpolate, dict(scale_factor=2)),
}


def leaf(rng, shape) -> minigen.Tensor:
    return minigen.tensor(rng.standard_normal(shape), requires_grad=True)


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_gradients_of_first_and_second_order(case):
    rng = np.random.default_rng(0)
    x, weight, bias = leaf(rng, case["x"]), leaf(rng, case["weight"]), leaf(rng, case["weight"][0])
    assert minigen.gradcheck(lambda a, w, b: F.conv2d(a, w, b, **case["kwargs"]), (x, weight, bias))
    assert minigen.gradgradcheck(lambda a, w, b: F.conv2d(a, w, b, **case["kwargs"]),
                                 (x, weight, bias))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "composed"])
def test_conv2d_with_bias_is_one_op_when_fused_and_gives_the_same_gradients(fused):
    # With fusion on the convolution adds the bias itself (one op, no second array); off, a
    # conv and then the bias add: the same values and gradients either way.
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(shape).astype(np.float32)
              for shape in ((2, 3, 6, 5), (4, 3, 3, 3), (4,), (2, 4, 6, 5))]

    def run(enabled):
        x, weight, bias = (minigen.tensor(a, requires_grad=True) for a in arrays[:3])
        with minigen.fusion(enabled):
            y = F.conv2d(x, weight, bias, padding=1)
        (y * minigen.tensor(arrays[3])).sum().backward()
        return y, [t.grad.numpy() for t in (x, weight, bias)]

    y, grads = run(fused)
    assert type(y._ctx).__name__ == ("Conv2dBias" if fused else "Add")  # composed: x + b
    expected_y, expected_grads = run(not fused)
    np.testing.assert_allclose(y.detach().numpy(), expected_y.detach().numpy(), rtol=1e-6,
                               atol=1e-6)
    for grad, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["3x3_padding_1", "groups_2", "depthwise"])
def test_conv2d_gradients_of_first_and_second_order_through_winograd(name, monkeypatch):
    # These few channels normally take im2col; a threshold of 0 sends them through Winograd.
    from minigen.kernels import cpu_conv
    monkeypatch.setattr(cpu_conv, "WINOGRAD_MIN_CHANNELS", 0)
    test_conv2d_gradients_of_first_and_second_order(CONV_CASES[name])


@pytest.mark.parametrize("case", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES.keys())
def test_conv_transpose2d_gradients_of_first_and_second_order(case):
    rng = np.random.default_rng(1)
    x, weight = leaf(rng, case["x"]), leaf(rng, case["weight"])
    assert minigen.gradcheck(lambda a, w: F.conv_transpose2d(a, w, **case["kwargs"]), (x, weight))
    assert minigen.gradgradcheck(lambda a, w: F.conv_transpose2d(a, w, **case["kwargs"]), (x, weight))


@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pool_and_upsample_gradients_of_first_and_second_order(case):
    op, kwargs = case
    x = leaf(np.random.default_rng(2), (2, 2, 5, 6))
    assert minigen.gradcheck(lambda a: op(a, **kwargs), (x,))
    assert minigen.gradgradcheck(lambda a: op(a, **kwargs), (x,))


def _compare_with_torch(minigen_fn, torch_fn, shapes, seed=3):
    torch = pytest.importorskip("torch", reason="PyTorch is the test twin (pip install -e '.[dev]')")
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for shape in shapes]
    ours = [minigen.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, expected = minigen_fn(*ours), torch_fn(*theirs)
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-10)
    weights = rng.standard_normal(out.shape)
    (out * minigen.tensor(weights)).sum().backward()
    (expected * torch.tensor(weights)).sum().backward()
    for mine, twin in zip(ours, theirs):
        np.testing.assert_allclose(mine.grad.numpy(), twin.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_matches_torch_in_value_and_gradient(case):
    torch = pytest.importorskip("torch")
    _compare_with_torch(lambda a, w, b: F.conv2d(a, w, b, **case["kwargs"]),
                        lambda a, w, b: torch.nn.functional.conv2d(a, w, b, **case["kwargs"]),
                        [case["x"], case["weight"], case["weight"][:1]])


@pytest.mark.parametrize("case", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES.keys())
def test_conv_transpose2d_matches_torch_in_value_and_gradient(case):
    torch = pytest.importorskip("torch")
    groups = case["kwargs"].get("groups", 1)
    _compare_with_torch(lambda a, w, b: F.conv_transpose2d(a, w, b, **case["kwargs"]),
                        lambda a, w, b: torch.nn.functional.conv_transpose2d(a, w, b, **case["kwargs"]),
                        [case["x"], case["weight"], (case["weight"][1] * groups,)])


@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pool_and_upsample_match_torch(case):
    torch = pytest.importorskip("torch")
    op, kwargs = case
    twin = {F.max_pool2d: torch.nn.functional.max_pool2d, F.avg_pool2d: torch.nn.functional.avg_pool2d,
            F.interpolate: torch.nn.functional.interpolate}[op]
    _compare_with_torch(lambda a: op(a, **kwargs), lambda a: twin(a, **kwargs), [(2, 3, 7, 6)])


def test_double_backward_through_conv_gives_the_gradient_penalty_torch_gives():
    """||d sum(D(x)) / dx||^2 for a conv critic; its parameter gradient needs conv's second order."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w1, w2 = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((1, 3, 3, 3))

    def penalty(lib, functional, x, w1, w2):
        hidden = functional.conv2d(x, w1, stride=2, padding=1).tanh()
        score = functional.conv2d(hidden, w2).sum()
        (grad_x,) = lib(score, x)
        return (grad_x * grad_x).sum()

    ours = [minigen.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    penalty(lambda s, x: minigen.grad(s, x, create_graph=True), F, *ours).backward()
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    penalty(lambda s, x: torch.autograd.grad(s, x, create_graph=True), torch.nn.functional, *theirs).backward()
    for mine, twin in zip(ours[1:], theirs[1:]):
        np.testing.assert_allclose(mine.grad.numpy(), twin.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_conv2d_names_both_channel_counts_when_they_disagree():
    x, weight = minigen.zeros(1, 3, 5, 5), minigen.zeros(8, 4, 3, 3)
    with pytest.raises(ValueError, match=r"input has 3 channels but weight expects 4"):
        F.conv2d(x, weight)


def test_conv_transpose2d_refuses_output_padding_not_below_stride():
    with pytest.raises(ValueError, match="output_padding"):
        F.conv_transpose2d(minigen.zeros(1, 2, 3, 3), minigen.zeros(2, 2, 3, 3), stride=2, output_padding=2)


def test_interpolate_refuses_fractional_scale():
    with pytest.raises(ValueError, match="positive integer"):
        F.interpolate(minigen.zeros(1, 1, 2, 2), scale_factor=1.5)


def test_conv2d_runs_in_float32_and_keeps_the_dtype():
    out = F.conv2d(minigen.randn(2, 3, 6, 6), minigen.randn(4, 3, 3, 3), padding=1)
    assert out.dtype == np.float32 and out.shape == (2, 4, 6, 6)
