"""minigen.optim: SGD, Adam and AdamW follow torch.optim step by step; gradient clipping matches
torch.nn.utils; schedules follow their formulas (and torch's where it has them); the EMA does
its documented arithmetic; every state dict round-trips."""
import math

import numpy as np
import pytest

import minigen
from minigen import nn, optim
from helpers import import_torch

SHAPES = [(3, 4), (5,), (2, 1, 3)]


def quadratic_loss(params, targets):
    """sum over params of sum((p - target)^2 * (1 + p^2)): non-trivial, curved gradients."""
    total = 0
    for param, target in zip(params, targets):
        total = total + ((param - target) ** 2 * (1 + param * param)).sum()
    return total


def start_and_targets(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal(shape).astype(dtype) for shape in SHAPES],
            [rng.standard_normal(shape).astype(dtype) for shape in SHAPES])


def twin_params(torch, dtype=np.float64, seed=0):
    """The same starting parameters as minigen Parameters and torch tensors, and targets."""
    arrays, targets = start_and_targets(dtype, seed)
    ours = [nn.Parameter(minigen.tensor(a.copy())) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    return ours, theirs, targets


def train(optimizer, params, targets, steps, loss_fn=quadratic_loss, wrap=minigen.tensor):
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(params, [wrap(t) for t in targets]).backward()
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in params])
    return trajectory


OPTIMIZER_CASES = {
    "sgd": ("SGD", dict(lr=0.05)),
    "sgd_momentum_nesterov_weight_decay": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True,
                                                       weight_decay=0.1)),
    "sgd_momentum_dampening": ("SGD", dict(lr=0.01, momentum=0.8, dampening=0.3)),
    "adam": ("Adam", dict(lr=0.05)),
    "adam_weight_decay_amsgrad": ("Adam", dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1,
                                               amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.05, weight_decay=0.1)),
    "adamw_maximize": ("AdamW", dict(lr=0.01, maximize=True)),
}


@pytest.mark.parametrize("name", list(OPTIMIZER_CASES))
def test_optimizer_matches_torch_step_by_step_for_20_steps(name):
    torch = import_torch()
    class_name, kwargs = OPTIMIZER_CASES[name]
    ours, theirs, targets = twin_params(torch)
    trajectory = train(getattr(optim, class_name)(ours, **kwargs), ours, targets, 20)
    expected = train(getattr(torch.optim, class_name)(theirs, **kwargs), theirs, targets, 20,
                     wrap=torch.tensor)
    for step, (mine, twin) in enumerate(zip(trajectory, expected)):
        for param, other in zip(mine, twin):
            np.testing.assert_allclose(param, other, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name}, step {step + 1}")


@pytest.mark.parametrize("class_name", ["SGD", "Adam"])
def test_float32_updates_stay_float32_and_close_to_torch(class_name):
    torch = import_torch()
    ours, theirs, targets = twin_params(torch, np.float32)
    kwargs = dict(lr=0.01, momentum=0.9) if class_name == "SGD" else dict(lr=0.01)
    mine = train(getattr(optim, class_name)(ours, **kwargs), ours, targets, 20)[-1]
    twin = train(getattr(torch.optim, class_name)(theirs, **kwargs), theirs, targets, 20,
                 wrap=torch.tensor)[-1]
    for param, other in zip(mine, twin):
        assert param.dtype == np.float32
        np.testing.assert_allclose(param, other, rtol=1e-5, atol=1e-5)


def test_parameters_without_gradients_are_skipped():
    used, unused = nn.Parameter(minigen.ones(2)), nn.Parameter(minigen.ones(2))
    optimizer = optim.Adam([used, unused], lr=0.1)
    (used * 3).sum().backward()
    optimizer.step()
    assert unused.tolist() == [1, 1] and used.tolist() != [1, 1]
    assert len(optimizer.state) == 1


def test_param_groups_carry_their_own_learning_rates():
    first, second = nn.Parameter(minigen.ones(1)), nn.Parameter(minigen.ones(1))
    optimizer = optim.SGD([{"params": [first]}, {"params": [second], "lr": 1.0}], lr=0.1)
    (first + second).sum().backward()
    optimizer.step()
    assert first.tolist() == pytest.approx([0.9]) and second.tolist() == pytest.approx([0.0])


def test_zero_grad_sets_gradients_to_none_or_zero():
    param = nn.Parameter(minigen.ones(2))
    optimizer = optim.SGD([param], lr=0.1)
    param.sum().backward()
    optimizer.zero_grad(set_to_none=False)
    assert param.grad.tolist() == [0, 0]
    optimizer.zero_grad()
    assert param.grad is None


@pytest.mark.parametrize("class_name, kwargs", [("SGD", dict(lr=0.05, momentum=0.9)),
                                                ("Adam", dict(lr=0.05, amsgrad=True)),
                                                ("AdamW", dict(lr=0.05))])
def test_resuming_from_a_numpy_state_dict_continues_the_same_trajectory(class_name, kwargs):
    make = getattr(optim, class_name)
    arrays, targets = start_and_targets()
    params = [nn.Parameter(minigen.tensor(a.copy())) for a in arrays]
    straight = [nn.Parameter(minigen.tensor(a.copy())) for a in arrays]
    optimizer = make(params, **kwargs)
    train(optimizer, params, targets, 5)
    state = optimizer.state_dict()
    saved = {"state": {index: {name: np.array(value) if hasattr(value, "shape") else value
                               for name, value in values.items()}
                       for index, values in state["state"].items()},
             "param_groups": [dict(group, betas=list(group["betas"])) if "betas" in group
                              else dict(group) for group in state["param_groups"]]}
    resumed_params = [nn.Parameter(minigen.tensor(p.data.copy())) for p in params]
    resumed = make(resumed_params, lr=123.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == kwargs["lr"]
    expected = train(make(straight, **kwargs), straight, targets, 8)[-1]
    train(optimizer, params, targets, 3)
    for param, other, reference in zip(train(resumed, resumed_params, targets, 3)[-1],
                                       [p.detach().numpy() for p in params], expected):
        np.testing.assert_array_equal(param, other)
        np.testing.assert_allclose(param, reference, rtol=1e-12)


def test_state_dict_numbers_parameters_across_groups_like_torch():
    first, second, third = (nn.Parameter(minigen.ones(2)) for _ in range(3))
    optimizer = optim.SGD([{"params": [first, second]}, {"params": [third], "lr": 0.5}],
                          lr=0.1, momentum=0.9)
    (first + second + third).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert [group["params"] for group in state["param_groups"]] == [[0, 1], [2]]
    assert sorted(state["state"]) == [0, 1, 2] and "momentum_buffer" in state["state"][2]


def test_load_state_dict_rejects_a_different_number_of_parameters():
    optimizer = optim.Adam([nn.Parameter(minigen.ones(2))])
    other = optim.Adam([nn.Parameter(minigen.ones(2)), nn.Parameter(minigen.ones(2))])
    with pytest.raises(ValueError, match="group 0 holds 2 parameters in the state but 1"):
        optimizer.load_state_dict(other.state_dict())


# ---- gradient clipping -----------------------------------------------------------------------
@pytest.mark.parametrize("max_norm, norm_type", [(0.5, 2.0), (100.0, 2.0), (0.3, 1.0),
                                                 (0.2, math.inf)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    torch = import_torch()
    ours, theirs, targets = twin_params(torch)
    quadratic_loss(ours, [minigen.tensor(t) for t in targets]).backward()
    quadratic_loss(theirs, [torch.tensor(t) for t in targets]).backward()
    total = nn.utils.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    for param, twin in zip(ours, theirs):
        np.testing.assert_allclose(param.grad.numpy(), twin.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_is_also_in_optim_and_leaves_shared_gradient_arrays_alone():
    assert optim.clip_grad_norm_ is nn.utils.clip_grad_norm_
    first, second = nn.Parameter(minigen.ones(3)), nn.Parameter(minigen.ones(3))
    (first + second).sum().backward()  # both gradients may be views of one array
    before = second.grad.numpy().copy()
    optim.clip_grad_norm_([first], 0.1)
    assert np.array_equal(second.grad.numpy(), before)
    assert np.linalg.norm(first.grad.numpy()) == pytest.approx(0.1, rel=1e-4)


# ---- learning-rate schedules ------------------------------------------------------------------
def learning_rates(scheduler, optimizer, steps):
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def one_param_sgd(lr=0.1):
    return optim.SGD([nn.Parameter(minigen.ones(1))], lr=lr)


def test_warmup_cosine_rises_linearly_then_follows_the_cosine_to_the_floor():
    optimizer = one_param_sgd(1.0)
    rates = learning_rates(optim.WarmupCosine(optimizer, warmup_steps=4, total_steps=12,
                                              min_lr_ratio=0.1), optimizer, 14)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert rates[4:13] == pytest.approx(expected)
    assert rates[13] == pytest.approx(0.1)


def test_linear_warmup_reaches_the_base_rate_and_stays():
    optimizer = one_param_sgd(0.3)
    rates = learning_rates(optim.LinearWarmup(optimizer, 3), optimizer, 5)
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


@pytest.mark.parametrize("make", [
    lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.01),
    lambda lib, opt: lib.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9 ** t),
])
def test_schedules_match_torch(make):
    torch = import_torch()
    ours = one_param_sgd(0.2)
    theirs = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.2)
    assert learning_rates(make(minigen, ours), ours, 12) == \
        pytest.approx(learning_rates(make(torch, theirs), theirs, 12), rel=1e-12)


def test_scheduler_state_round_trips():
    optimizer = one_param_sgd(1.0)
    scheduler = optim.WarmupCosine(optimizer, 2, 10)
    for _ in range(5):
        scheduler.step()
    fresh_optimizer = one_param_sgd(1.0)
    fresh = optim.WarmupCosine(fresh_optimizer, 2, 10)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    scheduler.step(), fresh.step()
    assert fresh.get_last_lr() == scheduler.get_last_lr()


# ---- EMA -------------------------------------------------------------------------------------------
def test_ema_follows_its_formula_with_warmup():
    model = nn.Linear(2, 1)
    initial = model.weight.detach().numpy().copy()
    ema = optim.EMA(model, decay=0.9, warmup=True)
    expected = initial.astype(np.float64)
    for t in range(4):
        model.weight.data += 1.0
        decay = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(decay)
        ema.update()
        expected = decay * expected + (1 - decay) * model.weight.detach().numpy()
    np.testing.assert_allclose(ema.shadow["weight"], expected, rtol=1e-6)


def test_ema_without_warmup_uses_the_constant_decay_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = optim.EMA(model, decay=0.5)
    before = model[0].bias.detach().numpy().copy()
    model[0].bias.data += 2.0
    model(minigen.randn(4, 2))  # moves the running statistics
    ema.update()
    np.testing.assert_allclose(ema.shadow["0.bias"], before + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(ema.buffers["1.running_mean"], model[1].running_mean.numpy())


def test_average_parameters_swaps_the_averages_in_and_restores_the_trained_weights():
    model = nn.Linear(2, 1)
    ema = optim.EMA(model, decay=0.5)
    trained = model.weight.detach().numpy() + 4.0
    model.weight.data[...] = trained
    ema.update()
    with ema.average_parameters() as averaged:
        assert averaged is model
        np.testing.assert_allclose(model.weight.detach().numpy(), trained - 2.0, rtol=1e-6)
    np.testing.assert_array_equal(model.weight.detach().numpy(), trained)


def test_ema_copy_to_fills_another_model_of_the_same_architecture():
    model, copy = nn.Linear(3, 2), nn.Linear(3, 2)
    ema = optim.EMA(model)
    ema.copy_to(copy)
    np.testing.assert_array_equal(copy.weight.detach().numpy(), model.weight.detach().numpy())
    with pytest.raises(ValueError, match="same architecture"):
        ema.copy_to(nn.Linear(3, 2, bias=False))


def test_ema_state_round_trips_through_numpy():
    model = nn.Linear(2, 2)
    ema = optim.EMA(model, decay=0.8, warmup=True)
    for _ in range(3):
        model.weight.data += 1.0
        ema.update()
    state = ema.state_dict()
    saved = {key: {name: np.array(v) for name, v in value.items()} if isinstance(value, dict)
             else value for key, value in state.items()}
    restored = optim.EMA(nn.Linear(2, 2), decay=0.1)
    restored.load_state_dict(saved)
    assert restored.num_updates == 3 and restored.decay == 0.8 and restored.warmup
    for name, value in ema.shadow.items():
        np.testing.assert_array_equal(restored.shadow[name], value)
