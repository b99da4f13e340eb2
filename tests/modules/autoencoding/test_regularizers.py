"""Latent distributions and regularizers against torch.distributions and brute force."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sgm.modules.autoencoding.regularizers import DiagonalGaussianRegularizer, IdentityRegularizer
from sgm.modules.autoencoding.regularizers.base import measure_perplexity
from sgm.modules.autoencoding.regularizers.quantize import (
    EMAVectorQuantizer,
    GumbelQuantizer,
    VectorQuantizer,
    VectorQuantizerWithInputProjection,
)
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution, normal_kl


def test_diagonal_gaussian_kl_nll_match_torch_distributions():
    params = torch.randn(3, 8, 4, 5)
    dist = DiagonalGaussianDistribution(params)
    mean, logvar = params.chunk(2, dim=1)
    p = Normal(mean, torch.exp(0.5 * logvar))
    q = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(dist.kl(), kl_divergence(p, q).sum(dim=[1, 2, 3]))
    other = DiagonalGaussianDistribution(torch.randn(3, 8, 4, 5))
    torch.testing.assert_close(
        dist.kl(other), kl_divergence(p, Normal(other.mean, other.std)).sum(dim=[1, 2, 3])
    )
    x = torch.randn(3, 4, 4, 5)
    torch.testing.assert_close(dist.nll(x), -p.log_prob(x).sum(dim=[1, 2, 3]))
    torch.testing.assert_close(
        normal_kl(mean, logvar, 0.0, 0.0), kl_divergence(p, q), atol=1e-6, rtol=1e-5
    )


def test_diagonal_gaussian_clamps_logvar_and_deterministic_mode():
    params = torch.cat([torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 100.0)], dim=1)
    assert DiagonalGaussianDistribution(params).logvar.max() == 20.0
    det = DiagonalGaussianDistribution(params, deterministic=True)
    torch.testing.assert_close(det.sample(), det.mean)
    assert det.kl().sum() == 0


def test_gaussian_regularizer_samples_with_generator_and_logs_batch_mean_kl():
    z = torch.randn(4, 8, 3, 3)
    reg = DiagonalGaussianRegularizer()
    a, log = reg(z, generator=torch.Generator().manual_seed(0))
    b, _ = reg(z, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    mean, logvar = z.chunk(2, dim=1)
    expected_kl = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum() / 4
    torch.testing.assert_close(log["kl_loss"], expected_kl)
    mode, _ = DiagonalGaussianRegularizer(sample=False)(z)
    torch.testing.assert_close(mode, mean)
    assert list(reg.get_trainable_parameters()) == []
    out, log = IdentityRegularizer()(z)
    assert out is z and log == {}


def test_vector_quantizer_picks_the_nearest_code():
    vq = VectorQuantizer(n_e=16, e_dim=4, beta=0.25, sane_index_shape=True, log_perplexity=True)
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    z_q, log = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(flat, vq.embedding.weight.detach()).argmin(dim=1)
    assert torch.equal(log["min_encoding_indices"].reshape(-1), nearest)
    assert log["min_encoding_indices"].shape == (2, 3, 5)
    expected = vq.embedding.weight[nearest].reshape(2, 3, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, expected)
    mse = ((expected - z) ** 2).mean()
    torch.testing.assert_close(log["loss/vq"], 1.25 * mse)
    z_q.sum().backward()  # straight-through estimator
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    torch.testing.assert_close(vq.get_codebook_entry(nearest, (2, 3, 5, 4)), expected)
    counts = torch.bincount(nearest, minlength=16).float() / nearest.numel()
    entropy = -(counts[counts > 0] * counts[counts > 0].log()).sum()
    torch.testing.assert_close(log["perplexity"], entropy.exp())
    assert log["cluster_usage"] == (counts > 0).sum()


def test_measure_perplexity_of_uniform_usage_is_codebook_size():
    perplexity, used = measure_perplexity(torch.arange(8).repeat(3), 8)
    torch.testing.assert_close(perplexity, torch.tensor(8.0))
    assert used == 8


def test_ema_quantizer_codebook_moves_towards_assigned_vectors():
    vq = EMAVectorQuantizer(n_embed=4, embedding_dim=2, beta=0.25, decay=0.5, eps=0.0)
    vq.embedding.weight.data = torch.tensor(
        [[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]
    )
    vq.embedding.embed_avg.data = vq.embedding.weight.data.clone()
    vq.embedding.cluster_size.data.fill_(1.0)
    z = torch.tensor([[1.0, 1.0], [9.0, 9.0]]).reshape(2, 2, 1, 1)
    vq.train()
    _, log = vq(z)
    assert log["encoding_indices"].tolist() == [0, 1]
    # cluster sizes 0.5*1 + 0.5*[1,1,0,0]; averages 0.5*old + 0.5*assigned sum
    sizes = torch.tensor([1.0, 1.0, 0.5, 0.5])
    avg = 0.5 * torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    avg += 0.5 * torch.tensor([[1.0, 1.0], [9.0, 9.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(vq.embedding.weight.data, avg / sizes[:, None])


def test_gumbel_and_projected_quantizers_shapes():
    gumbel = GumbelQuantizer(num_hiddens=8, embedding_dim=4, n_embed=10).eval()
    z_q, log = gumbel(torch.randn(2, 8, 3, 3))
    assert z_q.shape == (2, 4, 3, 3)
    codes = gumbel.get_codebook_entry(log["indices"].reshape(-1), (2, 3, 3, 4))
    torch.testing.assert_close(z_q, codes)
    proj = VectorQuantizerWithInputProjection(input_dim=6, n_codes=10, codebook_dim=3, output_dim=6)
    z_q, log = proj(torch.randn(2, 6, 4, 4))
    assert z_q.shape == (2, 6, 4, 4)
    with pytest.raises(ValueError, match="unknown_index"):
        VectorQuantizer(4, 2, unknown_index="sometimes")
