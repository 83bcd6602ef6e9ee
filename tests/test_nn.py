"""minigen.nn: registration, state dicts that load PyTorch's by name and give the same outputs,
strict checks, devices and dtypes, containers, initialisation statistics against PyTorch."""
from collections import OrderedDict

import numpy as np
import pytest

import minigen
from minigen import backend, nn
from helpers import assert_close, import_torch

cuda = pytest.mark.cuda


def small_conv_net(nn):
    """The same architecture in minigen.nn or torch.nn: every layer kind a state dict holds."""

    class SmallConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8)
            self.down = nn.Sequential(nn.Conv2d(8, 16, 4, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.LeakyReLU(0.2))
            self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
            self.head = nn.Sequential(nn.SiLU(), nn.Flatten(), nn.LayerNorm(8 * 8 * 8),
                                      nn.Linear(8 * 8 * 8, 5))

        def forward(self, x, labels):
            h = self.norm(self.conv(x)) + self.embed(labels).reshape(x.shape[0], 8, 1, 1)
            return self.head(self.up(self.down(h.relu())))

    return SmallConvNet()


def torch_twin_state(torch_model) -> dict:
    """A PyTorch state dict as NumPy arrays, the form a converted checkpoint takes."""
    return {key: value.detach().cpu().numpy() for key, value in torch_model.state_dict().items()}


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 4)


def run_both(torch, ours, theirs, x, labels, device="cpu"):
    out = ours(minigen.tensor(x, device=device), minigen.tensor(labels, device=device))
    expected = theirs(torch.tensor(x), torch.tensor(labels))
    return backend.to_numpy(out.detach().data), expected.detach().numpy()


# ---- registration --------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, with_shortcut: bool):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.shortcut = nn.Linear(3, 3, bias=False) if with_shortcut else None
        self.scale = nn.Parameter(minigen.ones(3))
        self.register_buffer("count", minigen.zeros(1))
        self.register_buffer("cache", minigen.zeros(2), persistent=False)
        self.name = "block"


def test_module_registers_parameters_buffers_and_submodules_by_attribute_name():
    block = Block(with_shortcut=True)
    assert [name for name, _ in block.named_parameters()] == \
        ["scale", "linear.weight", "linear.bias", "shortcut.weight"]
    assert [name for name, _ in block.named_buffers()] == ["count", "cache"]
    assert [name for name, _ in block.named_children()] == ["linear", "shortcut"]
    assert list(block.state_dict()) == ["scale", "count", "linear.weight", "linear.bias",
                                        "shortcut.weight"]
    assert block.name == "block" and "name" not in block.state_dict()


def test_attributes_set_to_none_are_allowed_and_skipped():
    block = Block(with_shortcut=False)
    assert block.shortcut is None and block.linear.bias is not None
    block.linear.bias = None
    block.count = None
    assert block.linear.bias is None and block.count is None
    assert list(block.state_dict()) == ["scale", "linear.weight"]
    block.linear.bias = nn.Parameter(minigen.zeros(3))
    assert "linear.bias" in block.state_dict()


def test_assigning_a_plain_value_to_a_parameter_slot_is_a_type_error():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign a Tensor to parameter 'weight'"):
        layer.weight = minigen.zeros(2, 2)


def test_assigning_before_module_init_says_to_call_super_init():
    class Forgetful(nn.Module):
        def __init__(self):
            self.layer = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Forgetful()


def test_shared_parameters_are_listed_once():
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert len(list(model.parameters())) == 2 and model.num_parameters() == 20


def test_repr_matches_torch_for_the_same_layers():
    torch = import_torch()

    def layers(nn):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8),
                             nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.SiLU(), nn.GELU(),
                             nn.Dropout(0.1), nn.Flatten(), nn.LayerNorm(16), nn.Embedding(10, 4),
                             nn.Linear(16, 2), nn.Tanh(), nn.Sigmoid(), nn.Identity())

    assert repr(layers(nn)) == repr(layers(torch.nn))


def test_train_and_eval_reach_every_submodule():
    model = small_conv_net(nn)
    assert all(module.training for module in model.modules())
    model.eval()
    assert not any(module.training for module in model.modules())
    model.train()
    assert all(module.training for module in model.modules())


def test_apply_visits_children_before_the_parent():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    visited = []
    model.apply(lambda module: visited.append(type(module).__name__))
    assert visited == ["Linear", "ReLU", "Sequential", "Sequential"]


def test_zero_grad_clears_every_gradient():
    model = nn.Linear(3, 2)
    model(minigen.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---- state dicts -----------------------------------------------------------------------------
def test_state_dict_keys_are_torchs_for_the_same_architecture():
    torch = import_torch()
    assert list(small_conv_net(nn).state_dict()) == list(small_conv_net(torch.nn).state_dict())


def test_num_batches_tracked_is_an_int64_scalar_tensor():
    state = nn.BatchNorm2d(4).state_dict()
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"].shape == ()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_state_dict_loads_by_name_and_gives_the_same_output(mode):
    torch = import_torch()
    torch.manual_seed(0)
    theirs = small_conv_net(torch.nn)
    ours = small_conv_net(nn)
    with torch.no_grad():  # non-trivial running statistics for eval mode
        theirs.down[1].running_mean.uniform_(-0.5, 0.5)
        theirs.down[1].running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(torch_twin_state(theirs))
    getattr(ours, mode)(), getattr(theirs, mode)()
    for seed in range(2):  # in train mode, the second pass sees updated running statistics
        out, expected = run_both(torch, ours, theirs, *inputs(seed))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    for key, value in torch_twin_state(theirs).items():
        np.testing.assert_allclose(ours.state_dict()[key].numpy(), value, rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_gradients_after_loading_a_torch_state_dict_match_torch():
    torch = import_torch()
    theirs, ours = small_conv_net(torch.nn), small_conv_net(nn)
    ours.load_state_dict(torch_twin_state(theirs))
    x, labels = inputs()
    (ours(minigen.tensor(x), minigen.tensor(labels)) ** 2).sum().backward()
    (theirs(torch.tensor(x), torch.tensor(labels)) ** 2).sum().backward()
    for (name, param), (_, twin) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(param.grad.numpy(), twin.grad.numpy(), rtol=1e-3, atol=1e-4,
                                   err_msg=name)


def test_load_state_dict_copies_into_the_existing_arrays():
    model = nn.Linear(3, 2)
    weight_array = model.weight.data
    state = {"weight": np.arange(6, dtype=np.float64).reshape(2, 3), "bias": np.ones(2)}
    model.load_state_dict(state)
    assert model.weight.data is weight_array and model.weight.dtype == np.float32
    assert model.weight.tolist() == [[0, 1, 2], [3, 4, 5]]
    state["weight"][0, 0] = 100  # no aliasing with the caller's arrays
    assert model.weight.data[0, 0] == 0


def test_load_state_dict_accepts_a_minigen_state_dict():
    source, target = small_conv_net(nn), small_conv_net(nn)
    target.load_state_dict(source.state_dict())
    for (key, value), other in zip(source.state_dict().items(), target.state_dict().values()):
        assert np.array_equal(value.numpy(), other.numpy()), key


def test_strict_load_lists_missing_and_unexpected_keys_and_changes_nothing():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    before = model[0].weight.detach().numpy().copy()
    del state["1.running_var"]
    state["0.weight"] = state["0.weight"] + 1
    state["2.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing keys: 1\.running_var; unexpected keys: 2\.weight"):
        model.load_state_dict(state)
    assert np.array_equal(model[0].weight.detach().numpy(), before)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["2.weight"]
    assert np.array_equal(model[0].weight.detach().numpy(), before + 1)


def test_shape_mismatch_names_the_key_and_both_shapes_even_when_not_strict():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3)))
    state = {"conv.weight": np.zeros((8, 4, 3, 3)), "conv.bias": np.zeros(8)}
    message = "weight 'conv.weight': checkpoint has shape (8, 4, 3, 3) but the model has (8, 3, 3, 3)"
    for strict in (True, False):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            model.load_state_dict(state, strict=strict)


def test_to_dtype_keeps_the_parameter_objects_that_an_optimizer_holds():
    model = small_conv_net(nn)
    params = list(model.parameters())
    optimizer = minigen.optim.SGD(model.parameters(), lr=0.1)
    model.to(np.float64)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(p.dtype == np.float64 for p in optimizer.param_groups[0]["params"])
    assert model.down[1].num_batches_tracked.dtype == np.int64


def test_non_persistent_buffers_move_with_the_module_but_are_not_saved():
    block = Block(with_shortcut=False).double()
    assert block.cache.dtype == np.float64 and "cache" not in block.state_dict()


# ---- containers and layers ---------------------------------------------------------------------
def test_sequential_and_module_list_index_like_lists_and_name_by_position():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert isinstance(model[-1], nn.Linear) and len(model) == 3
    assert isinstance(model[:2], nn.Sequential) and len(model[:2]) == 2
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    layers.append(nn.Linear(2, 4))
    assert [name for name, _ in layers.named_parameters()][-2:] == ["2.weight", "2.bias"]
    assert model(minigen.randn(5, 2)).shape == (5, 1)


def test_embedding_sums_gradients_of_repeated_ids_and_skips_padding_idx():
    torch = import_torch()
    ours, theirs = nn.Embedding(5, 3, padding_idx=0), torch.nn.Embedding(5, 3, padding_idx=0)
    ours.load_state_dict(torch_twin_state(theirs))
    ids = np.array([[1, 1, 0], [4, 2, 1]])
    (ours(minigen.tensor(ids)) * 2).sum().backward()
    (theirs(torch.tensor(ids)) * 2).sum().backward()
    assert_close(ours.weight.grad.numpy(), theirs.weight.grad.numpy())
    assert ours.weight.grad.numpy()[0].tolist() == [0, 0, 0]


def test_embedding_rejects_ids_out_of_range():
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 5\)"):
        nn.Embedding(5, 3)(minigen.tensor([0, 5]))


def test_dropout_is_the_identity_in_eval():
    dropout = nn.Dropout(0.5).eval()
    x = minigen.randn(10, 10)
    assert dropout(x) is x
    kept = (dropout.train()(x).numpy() != 0).mean()
    assert 0.3 < kept < 0.7


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_running_statistics_follow_torch_over_several_batches(momentum):
    torch = import_torch()
    ours, theirs = nn.BatchNorm2d(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 3 + 1
        ours(minigen.tensor(x)), theirs(torch.tensor(x))
    for key, value in torch_twin_state(theirs).items():
        np.testing.assert_allclose(ours.state_dict()[key].numpy(), value, rtol=1e-5, err_msg=key)


# ---- initialisation ------------------------------------------------------------------------------
def layer_pairs(nn):
    return {"linear": nn.Linear(256, 128), "conv": nn.Conv2d(32, 64, 3),
            "conv_groups": nn.Conv2d(32, 64, 3, groups=4),
            "conv_transpose": nn.ConvTranspose2d(64, 32, 4), "embedding": nn.Embedding(300, 64)}


@pytest.mark.parametrize("name", ["linear", "conv", "conv_groups", "conv_transpose", "embedding"])
def test_default_initialisation_has_torchs_statistics(name):
    torch = import_torch()
    minigen.manual_seed(0), torch.manual_seed(0)
    ours, theirs = layer_pairs(nn)[name], layer_pairs(torch.nn)[name]
    for key, twin in theirs.state_dict().items():
        value, twin = ours.state_dict()[key].numpy(), twin.numpy()
        assert value.shape == twin.shape
        # Same distribution: the same support, and the same spread where there are enough
        # samples to measure it (weights; a bias has tens of values).
        assert abs(np.abs(value).max() / np.abs(twin).max() - 1) < 0.15, key
        if value.size >= 1000:
            assert abs(value.std() / twin.std() - 1) < 0.05, key


def test_linear_weight_and_bias_lie_within_one_over_sqrt_fan_in():
    layer = nn.Linear(64, 512)
    bound = 1 / np.sqrt(64)
    for param in (layer.weight, layer.bias):
        values = param.detach().numpy()
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound


def test_manual_seed_makes_initialisation_reproducible():
    minigen.manual_seed(3)
    first = nn.Conv2d(3, 4, 3).weight.detach().numpy()
    minigen.manual_seed(3)
    assert np.array_equal(first, nn.Conv2d(3, 4, 3).weight.detach().numpy())


@pytest.mark.parametrize("fill, expected_std", [
    (lambda t: nn.init.kaiming_normal_(t, nonlinearity="relu"), np.sqrt(2 / 200)),
    (lambda t: nn.init.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu"), np.sqrt(2 / 300)),
    (lambda t: nn.init.xavier_uniform_(t), np.sqrt(2 / 500)),
    (lambda t: nn.init.xavier_normal_(t, gain=2.0), 2 * np.sqrt(2 / 500)),
    (lambda t: nn.init.normal_(t, 1.0, 0.5), 0.5),
    (lambda t: nn.init.uniform_(t, -2.0, 2.0), 4 / np.sqrt(12)),
])
def test_init_functions_give_the_documented_spread(fill, expected_std):
    weight = nn.Parameter(minigen.zeros(300, 200))
    assert fill(weight) is weight
    assert abs(weight.detach().numpy().std() / expected_std - 1) < 0.02


def test_constant_inits_fill_in_place():
    weight = nn.Parameter(minigen.randn(3, 2))
    array = weight.data
    assert np.all(nn.init.zeros_(weight).detach().numpy() == 0)
    assert np.all(nn.init.ones_(weight).detach().numpy() == 1)
    assert np.all(nn.init.constant_(weight, 0.5).detach().numpy() == 0.5)
    assert weight.data is array


# ---- the GPU -----------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_state_dict_loads_on_the_gpu_and_gives_the_same_output(mode, cuda_backend):
    torch = import_torch()
    theirs = small_conv_net(torch.nn)
    ours = small_conv_net(nn).to("cuda")
    ours.load_state_dict(torch_twin_state(theirs))
    assert all(p.device == "cuda" for p in ours.parameters())
    getattr(ours, mode)(), getattr(theirs, mode)()
    out, expected = run_both(torch, ours, theirs, *inputs(), device="cuda")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(minigen.cuda_available(), reason="checks the message on machines without CUDA")
def test_moving_to_cuda_without_a_gpu_says_what_is_missing():
    with pytest.raises(RuntimeError, match="device 'cuda' was asked for, but"):
        nn.Linear(2, 2).to("cuda")
