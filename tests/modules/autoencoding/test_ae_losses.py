"""LPIPS against the `lpips` package, PatchGAN discriminator, GAN/reconstruction losses."""

import pytest
import torch

from sgm.checkpoint import load_state_dict
from sgm.errors import CheckpointError
from sgm.modules.autoencoding.losses import GeneralLPIPSWithDiscriminator
from sgm.modules.autoencoding.lpips.loss.lpips import LPIPS
from sgm.modules.autoencoding.lpips.model.model import NLayerDiscriminator
from sgm.modules.autoencoding.lpips.util import ActNorm
from sgm.modules.autoencoding.lpips.vqperceptual import hinge_d_loss, vanilla_d_loss


@pytest.fixture(scope="module")
def reference_lpips():
    """The `lpips` package's VGG LPIPS: its shipped linear heads, a random VGG16 trunk."""
    import warnings

    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained` deprecation
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()


def test_lpips_from_a_full_state_dict_matches_the_lpips_package(reference_lpips, tmp_path):
    path = tmp_path / "lpips_full.pt"
    torch.save(
        {k: v for k, v in reference_lpips.state_dict().items() if not k.startswith("lins.")}, path
    )
    ours = LPIPS(weights_path=path).eval()
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = reference_lpips(a, b)
        torch.testing.assert_close(ours(a, b), expected, atol=1e-5, rtol=1e-5)
    assert expected.shape == (2, 1, 1, 1) and (expected > 0).all()


def test_lpips_from_heads_plus_torchvision_vgg_file(reference_lpips, tmp_path, monkeypatch):
    """Heads from $SGM_LPIPS_WEIGHTS, trunk from a torchvision-format VGG16 file."""
    import lpips

    heads = lpips.__path__[0] + "/weights/v0.1/vgg.pth"
    vgg = {}
    for key, value in reference_lpips.net.state_dict().items():
        _, index, name = key.split(".")  # sliceK.N.weight -> features.N.weight
        vgg[f"features.{index}.{name}"] = value
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    monkeypatch.setenv("SGM_LPIPS_WEIGHTS", heads)
    monkeypatch.setenv("SGM_LPIPS_VGG16_WEIGHTS", str(tmp_path / "vgg16-397923af.pth"))
    ours = LPIPS().eval()
    torch.testing.assert_close(
        ours.lin2.model[1].weight, load_state_dict(heads)["lin2.model.1.weight"]
    )
    a, b = torch.rand(1, 3, 48, 48) * 2 - 1, torch.rand(1, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(a, b), reference_lpips(a, b), atol=1e-5, rtol=1e-5)


def test_lpips_without_weights_names_the_file_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("SGM_LPIPS_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    heads = tmp_path / "vgg.pth"
    torch.save(
        {
            f"lin{i}.model.1.weight": torch.zeros(1, c, 1, 1)
            for i, c in enumerate([64, 128, 256, 512, 512])
        },
        heads,
    )
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        LPIPS(weights_path=heads)
    with pytest.raises(CheckpointError, match="not found"):
        LPIPS(weights_path=tmp_path / "missing.pth")
    assert not any(p.requires_grad for p in LPIPS(pretrained=False).parameters())


def test_patchgan_discriminator_size_and_patch_grid():
    # pix2pix reports 2.769 M parameters for its default D on 6-channel (A, B) pairs.
    disc = NLayerDiscriminator(input_nc=6)
    assert sum(p.numel() for p in disc.parameters()) == 2_768_705
    # A 70x70 PatchGAN maps 256x256 inputs to a 30x30 grid of logits.
    assert NLayerDiscriminator(n_layers=3)(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    act = NLayerDiscriminator(use_actnorm=True)
    assert any(isinstance(m, ActNorm) for m in act.modules())


def test_actnorm_initialises_to_zero_mean_unit_std_and_inverts():
    norm = ActNorm(3).train()
    x = torch.randn(8, 3, 5, 5) * 4 + 2
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=[0, 2, 3]), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=[0, 2, 3]), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.reverse(y), x, atol=1e-5, rtol=1e-5)


def test_discriminator_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # hinge: relu(1 - real) = [0, .5], relu(1 + fake) = [0, 1.5]
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.75)))
    softplus = torch.nn.functional.softplus
    expected = 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    torch.testing.assert_close(vanilla_d_loss(real, fake), expected)


def _loss(**kwargs):
    params = dict(
        disc_start=2,
        perceptual_weight=0.0,
        learn_logvar=True,
        logvar_init=0.3,
        regularization_weights={"kl_loss": 0.5},
        disc_num_layers=1,
        lpips_kwargs={"pretrained": False},
    )
    return GeneralLPIPSWithDiscriminator(**{**params, **kwargs})


def test_generator_loss_before_disc_start_is_weighted_nll_plus_regularization():
    loss_fn = _loss()
    x, xrec = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    kl = torch.tensor(3.0)
    loss, log = loss_fn(
        x,
        xrec,
        regularization_log={"kl_loss": kl},
        optimizer_idx=0,
        global_step=0,
        last_layer=torch.zeros(1, requires_grad=True),
    )
    lv = torch.tensor(0.3)
    nll = ((x - xrec).abs() / lv.exp() + lv).sum() / 2
    torch.testing.assert_close(loss, nll + 0.5 * kl)
    assert log["train/scalars/d_weight"] == 0 and log["train/kl_loss"] == 3.0
    assert [p for p in loss_fn.get_trainable_autoencoder_parameters()] == [loss_fn.logvar]


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms():
    loss_fn = _loss(disc_weight=0.5)
    w = torch.randn(5, requires_grad=True)
    a, b = torch.randn(5), torch.randn(5)
    d_weight = loss_fn.calculate_adaptive_weight((a * w).sum(), (b * w).sum(), w)
    torch.testing.assert_close(d_weight, 0.5 * a.norm() / (b.norm() + 1e-4))


def test_discriminator_step_after_disc_start_uses_hinge_loss():
    loss_fn = _loss()
    x, xrec = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    d_loss, log = loss_fn(
        x, xrec, regularization_log={}, optimizer_idx=1, global_step=5, last_layer=None
    )
    with torch.no_grad():
        expected = hinge_d_loss(loss_fn.discriminator(x), loss_fn.discriminator(xrec))
    torch.testing.assert_close(d_loss, expected)
    assert set(log) == {"train/loss/disc", "train/logits/real", "train/logits/fake"}
    zero, _ = loss_fn(
        x, xrec, regularization_log={}, optimizer_idx=1, global_step=0, last_layer=None
    )
    assert zero == 0
