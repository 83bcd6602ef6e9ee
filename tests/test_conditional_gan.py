"""The class-conditional DCGAN, as a specification: the projection discriminator's equation
(Miyato and Koyama, 2018) by hand and its gradients, a generator that follows its label, the
loop's labels, and the checkpoint and command line of `minigen train gan --conditional`.
(Exact resumption of a conditional run is in test_gan.py, beside the unconditional ones.)"""
from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import cli
from minigen.gan import GANLoop
from minigen.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init
from minigen.nn import init
from minigen.run import default_config, load_trained, read_checkpoint_config, train
from helpers import assert_close

LABELS = np.array([3, 7, 0, 3])


def conditional_config(**overrides) -> dict:
    """A tiny conditional GAN on 8x8 digit-shaped images, as the harness would configure it."""
    config = default_config(GANLoop, conditional=True, width=4, latent_dim=4, lr=1e-3)
    config.update(dataset="digits", data_kind="images", data_shape=[1, 8, 8], num_classes=10)
    config.update(overrides)
    return config


def values(tensor: minigen.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def labels_tensor(labels=LABELS) -> minigen.Tensor:
    return minigen.tensor(np.asarray(labels, dtype=np.int64))


# --- the projection discriminator ------------------------------------------------------------
@pytest.mark.parametrize("image_size", [8, 16])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_projection_discriminator_is_psi_of_phi_plus_class_embedding_dot_phi(norm, image_size):
    minigen.manual_seed(0)
    discriminator = dcgan_init(DCGANDiscriminator(1, image_size, width=4, norm=norm,
                                                  num_classes=10))
    init.normal_(discriminator.class_embedding.weight, 0.0, 1.0)  # a term of weight
    images = minigen.randn(4, 1, image_size, image_size)
    phi = values(discriminator.hidden_map(images)).reshape(4, -1)
    psi_weight = values(discriminator.net[-1].weight).reshape(-1)   # (1, C, s, s) -> (F,)
    embedding = values(discriminator.class_embedding.weight)[LABELS]
    expected = phi @ psi_weight + (embedding * phi).sum(axis=1)
    assert_close(values(discriminator(images, labels_tensor())), expected[:, None], np.float32)


def test_unconditional_discriminator_is_psi_of_phi_alone():
    minigen.manual_seed(0)
    discriminator = dcgan_init(DCGANDiscriminator(1, 8, width=4))
    images = minigen.randn(4, 1, 8, 8)
    phi = values(discriminator.hidden_map(images)).reshape(4, -1)
    expected = phi @ values(discriminator.net[-1].weight).reshape(-1)
    assert_close(values(discriminator(images)), expected[:, None], np.float32)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_projection_discriminator_gradients_reach_images_and_class_embedding_float64(norm):
    minigen.manual_seed(0)
    discriminator = DCGANDiscriminator(1, 8, width=2, norm=norm, num_classes=3).to(np.float64)
    embedding = discriminator.class_embedding.weight
    images = minigen.randn(3, 1, 8, 8, dtype=np.float64, requires_grad=True)
    labels = labels_tensor([2, 0, 2])
    # fn's arguments are perturbed in place, so D, which holds the embedding, sees the change.
    assert minigen.gradcheck(lambda x, weight: discriminator(x, labels), [images, embedding])
    discriminator(images, labels).sum().backward()
    assert not np.any(values(embedding.grad)[1])  # class 1 is not in the batch: no gradient


# --- the conditional generator -----------------------------------------------------------
def test_conditional_generator_draws_another_image_for_another_label_from_the_same_noise():
    minigen.manual_seed(0)
    generator = dcgan_init(DCGANGenerator(latent_dim=4, image_size=8, width=4, num_classes=10))
    generator.eval()
    z = minigen.randn(1, 4).expand(3, 4)
    images = values(generator(z, labels_tensor([3, 3, 7])))
    assert images.shape == (3, 1, 8, 8)
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0] - images[2]).max() > 1e-4


@pytest.mark.parametrize("model", [
    lambda classes: DCGANGenerator(latent_dim=4, image_size=8, width=4, num_classes=classes),
    lambda classes: DCGANDiscriminator(1, 8, width=4, num_classes=classes),
], ids=["generator", "discriminator"])
def test_labels_are_required_by_a_conditional_model_and_refused_by_an_unconditional_one(model):
    inputs = minigen.randn(2, 4) if isinstance(model(None), DCGANGenerator) \
        else minigen.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="pass labels"):
        model(10)(inputs)
    with pytest.raises(ValueError, match="num_classes=K"):
        model(None)(inputs, labels_tensor([1, 2]))


# --- the loop ------------------------------------------------------------------------------
def test_train_step_moves_the_class_embeddings_of_the_batch_classes_only():
    minigen.manual_seed(0)
    loop = GANLoop(conditional_config(), "cpu")
    before = {name: values(model.class_embedding.weight).copy()
              for name, model in loop.models().items()}
    loop.train_step(minigen.randn(4, 1, 8, 8).tanh(), labels_tensor(), 0)
    for name, model in loop.models().items():
        moved = np.any(values(model.class_embedding.weight) != before[name], axis=1)
        assert sorted(np.flatnonzero(moved)) == sorted(set(LABELS)), name


def test_sample_draws_the_asked_class_or_every_class_in_turn():
    loop = GANLoop(conditional_config(), "cpu")
    np.testing.assert_array_equal(values(loop.sample_labels(12)), np.arange(12) % 10)
    np.testing.assert_array_equal(values(loop.sample_labels(3, 7)), [7, 7, 7])
    minigen.manual_seed(5)
    samples = loop.sample(3, class_label=7)
    minigen.manual_seed(5)
    loop.generator.eval()
    expected = values(loop.generator(loop.noise(3), labels_tensor([7, 7, 7])))
    np.testing.assert_array_equal(samples, expected)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_classes=None), "--conditional needs class labels"),
    (dict(data_kind="points", data_shape=[2], num_classes=8), "toy points train unconditionally"),
])
def test_conditional_needs_labelled_images(overrides, message):
    with pytest.raises(ValueError, match=message):
        GANLoop(conditional_config(**overrides), "cpu")


def test_a_class_that_does_not_exist_is_refused_with_the_known_range():
    with pytest.raises(ValueError, match=r"0\.\.9"):
        GANLoop(conditional_config(), "cpu").sample(2, class_label=12)


# --- checkpoints and the command line -----------------------------------------------------------
@pytest.fixture(scope="module")
def gan_checkpoints(tmp_path_factory):
    """{"conditional": path, "unconditional": path}: two steps of `minigen train gan` on digits."""
    paths = {}
    for kind in ("conditional", "unconditional"):
        out = tmp_path_factory.mktemp(f"gan-{kind}")
        options = default_config(GANLoop, dataset="digits", steps=2, batch_size=8, width=4,
                                 latent_dim=4, out=str(out), eval_samples=0,
                                 conditional=kind == "conditional")
        train(GANLoop, options, progress=False, say=lambda message: None)
        paths[kind] = str(out / "checkpoint.h5")
    return paths


def test_a_conditional_checkpoint_records_its_classes_and_rebuilds_a_conditional_gan(
        gan_checkpoints):
    config, step = read_checkpoint_config(gan_checkpoints["conditional"])
    assert config["conditional"] is True and config["num_classes"] == 10 and step == 2
    loop, _, _ = load_trained(gan_checkpoints["conditional"], GANLoop)
    assert loop.generator.num_classes == loop.discriminator.num_classes == 10
    assert loop.generator.class_embedding.weight.shape == (10, 10)


def test_minigen_sample_draws_a_class_from_a_conditional_gan_checkpoint(gan_checkpoints, tmp_path):
    out = tmp_path / "sevens.npy"
    assert cli.main(["sample", gan_checkpoints["conditional"], "--class", "7", "--n", "5",
                     "--out", str(out)]) == 0
    loop, _, _ = load_trained(gan_checkpoints["conditional"], GANLoop)
    minigen.manual_seed(0)  # the command's default --seed
    np.testing.assert_array_equal(np.load(out), loop.sample(5, class_label=7))


@pytest.mark.parametrize("kind, args, message", [
    ("unconditional", ["--class", "3"], "unconditional (trained without --conditional)"),
    ("unconditional", ["--class", "3"], "minigen train gan --conditional"),
    ("conditional", ["--class", "10"], "classes 0..9"),
    ("conditional", ["--class", "3", "--guidance", "2"], "--guidance is not an option of the gan"),
])
def test_a_class_a_gan_checkpoint_cannot_draw_is_one_line_naming_the_fix(gan_checkpoints,
                                                                         tmp_path, capsys,
                                                                         kind, args, message):
    out = tmp_path / "s.png"
    code = cli.main(["sample", gan_checkpoints[kind], *args, "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and message in error
    assert "Traceback" not in error and error.count("\n") == 1 and not out.exists()
