"""Networks and parameter EMA: shapes, errors, quantizer behaviour."""

import pytest
import torch

from mmexp.ema import EMA
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks import (
    DCGANDiscriminator, DCGANGenerator, Decoder, Encoder, GaussianDecoder, GaussianEncoder,
    VectorQuantizer,
)


# ----------------------------------------------------------------------------- DCGAN
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    g = DCGANGenerator(latent_dim=16, channels=channels, image_size=size, base_channels=8)
    x = g(torch.randn(4, 16))
    assert x.shape == (4, channels, size, size)
    assert x.abs().max() <= 1
    assert g(torch.randn(4, 16, 1, 1)).shape == x.shape
    for sn in (False, True):
        d = DCGANDiscriminator(channels=channels, image_size=size, base_channels=8,
                               spectral_norm=sn)
        assert d(x).shape == (4,)


@pytest.mark.parametrize("cls", [DCGANGenerator, DCGANDiscriminator])
def test_dcgan_unsupported_size(cls):
    with pytest.raises(ShapeMismatchError) as e:
        cls(image_size=48, base_channels=8)
    msg = str(e.value)
    assert "48" in msg and "28, 32, 64" in msg


def test_dcgan_init():
    g = DCGANGenerator(latent_dim=100, image_size=64, base_channels=16)
    w = g.net[0].weight
    assert abs(w.std().item() - 0.02) < 0.003 and abs(w.mean().item()) < 0.003
    d = DCGANDiscriminator(image_size=32, base_channels=8, spectral_norm=True)
    assert any("parametrizations" in n for n, _ in d.named_parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_pixel_shuffle_generator_starts_as_nearest_upsampling(size):
    """upsample=pixel_shuffle: the nearest-neighbour G's multiply-adds at each stage, ICNR-initialised (every 2x2
    output block equal at init, no checkerboard), its sub-pixels free to differ once trained; an unknown mode
    lists the choices."""
    g = DCGANGenerator(latent_dim=16, channels=3, image_size=size, base_channels=8, upsample="pixel_shuffle")
    near = DCGANGenerator(latent_dim=16, channels=3, image_size=size, base_channels=8, upsample="nearest")
    macs = lambda net: sum(m.weight.numel() * o.shape[-1] * o.shape[-2] for m, o in _conv_outputs(net))
    assert macs(g) == macs(near)
    x = g(torch.randn(4, 16))
    assert x.shape == (4, 3, size, size)
    torch.testing.assert_close(x[..., 0::2, 0::2], x[..., 1::2, 1::2], rtol=0, atol=0)
    torch.testing.assert_close(x[..., 0::2, 0::2], x[..., 1::2, 0::2], rtol=0, atol=0)
    # a loss that differs between the sub-pixels (as D's does) breaks the symmetry
    (x - torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).square().mean().backward()
    torch.optim.SGD(g.parameters(), lr=1.0).step()
    y = g(torch.randn(4, 16))
    assert (y[..., 0::2, 0::2] - y[..., 1::2, 1::2]).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="transposed, nearest, pixel_shuffle"):
        DCGANGenerator(upsample="bilinear")


def _conv_outputs(net):
    """(conv, its output) of every conv of ``net`` on one latent."""
    out = []
    hooks = [m.register_forward_hook(lambda m, i, o: out.append((m, o)))
             for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.randn(1, net.latent_dim))
    for h in hooks:
        h.remove()
    return out


# ----------------------------------------------------------------------------- autoencoders
@pytest.mark.parametrize("size,mults,latent", [(28, (1, 2, 2), 7), (32, (1, 2), 16),
                                                (64, (1, 1, 2, 2), 8)])
def test_encoder_decoder_shapes(size, mults, latent):
    enc = Encoder(channels=3, image_size=size, out_channels=5, base_channels=8,
                  channel_mults=mults, num_res_blocks=1)
    dec = Decoder(channels=3, in_channels=5, base_channels=8, channel_mults=mults,
                  num_res_blocks=1)
    z = enc(torch.randn(2, 3, size, size))
    assert z.shape == (2, 5, latent, latent) and enc.latent_size == latent
    assert dec(z).shape == (2, 3, size, size)


def test_encoder_indivisible_size():
    with pytest.raises(ShapeMismatchError, match="28"):
        Encoder(image_size=28, channel_mults=(1, 2, 2, 2))


def test_gaussian_encoder_decoder():
    enc = GaussianEncoder(channels=1, image_size=28, latent_dim=6, base_channels=8,
                          channel_mults=(1, 2, 2))
    dec = GaussianDecoder(channels=1, image_size=28, latent_dim=6, base_channels=8,
                          channel_mults=(1, 2, 2))
    mu, logvar = enc(torch.randn(4, 1, 28, 28))
    assert mu.shape == logvar.shape == (4, 6)
    assert dec(mu).shape == (4, 1, 28, 28)


# ----------------------------------------------------------------------------- quantizer
def _vq(**kw):
    kw = {"num_codes": 8, "code_dim": 4, **kw}
    return VectorQuantizer(**kw)


def test_quantizer_nearest_code_and_straight_through():
    vq = _vq(dead_code_threshold=0).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, vq.embedding.detach()).argmin(1)
    assert torch.equal(out.indices.flatten(), expected)
    assert out.indices.shape == (2, 3, 3) and out.quantized.shape == z.shape
    torch.testing.assert_close(out.quantized, vq.embed(out.indices))
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through: identity
    assert 1 <= out.perplexity <= 8 and 0 < out.usage <= 1


@pytest.mark.parametrize("ema", [True, False])
def test_quantizer_trains_under_bf16_autocast_as_in_fp32(ema):
    """trainer=gpu trains in bf16-mixed: the EMA codebook update used to fail there ("expected dtype float for
    `end`"), and bf16 distances would pick other codes. Under autocast the quantizer assigns the codes fp32 does
    and keeps fp32 statistics."""
    z = torch.randn(4, 8, 6, 6)
    outs, quantizers = [], []
    for autocast in (False, True):
        torch.manual_seed(0)
        vq = VectorQuantizer(32, 8, ema=ema, restart_from="error", dead_code_threshold=0.5).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            torch.manual_seed(1)
            outs.append(vq(z))
            outs.append(vq(z * 0.5))
        quantizers.append(vq)
    assert torch.equal(outs[0].indices, outs[2].indices) and torch.equal(outs[1].indices, outs[3].indices)
    a, b = quantizers
    assert b.cluster_size.dtype == b.embed_sum.dtype == b.embedding.dtype == torch.float32
    torch.testing.assert_close(b.embedding, a.embedding)
    torch.testing.assert_close(b.cluster_size, a.cluster_size)


def test_quantizer_losses_and_codebook_gradient():
    vq = _vq(dead_code_threshold=0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    out.codebook.backward()  # gradient to the codebook only
    assert vq.embedding.grad is not None and vq.embedding.grad.abs().sum() > 0 and z.grad is None
    out.commitment.backward()  # gradient to the encoder output only
    assert z.grad is not None and z.grad.abs().sum() > 0
    e = vq.embed(out.indices).detach()
    torch.testing.assert_close(out.commitment, (z.detach() - e).pow(2).mean())
    torch.testing.assert_close(out.codebook, out.commitment)  # same distance, other gradient
    vq_ema = _vq(ema=True, dead_code_threshold=0)
    assert not vq_ema.embedding.requires_grad
    out = vq_ema(z)
    assert out.codebook is None and torch.isfinite(out.commitment)


def test_ema_codebook_moves_toward_assigned_encodings():
    vq = _vq(ema=True, decay=0.5, dead_code_threshold=0)
    codes = torch.eye(8, 4) * 5  # codes 0-3 on the axes, 4-7 at the origin
    vq.embedding.data.copy_(codes)
    vq.cluster_size.fill_(1.0)
    vq.embed_sum.copy_(codes)
    target = torch.tensor([4.0, 1.0, 0.0, 0.0])  # nearest to code 0
    z = target.view(1, 4, 1, 1).expand(2, 4, 2, 2).contiguous()
    before = (vq.embedding[0] - target).norm()
    out = vq(z)
    assert (out.indices == 0).all()
    after = (vq.embedding[0] - target).norm()
    assert after < before * 0.8
    torch.testing.assert_close(vq.cluster_size[0], torch.tensor(0.5 + 0.5 * 8))
    torch.testing.assert_close(vq.embedding[1], codes[1], atol=1e-3, rtol=0)  # unused: kept
    vq.eval()
    frozen = vq.embedding.clone()
    vq(z)
    assert torch.equal(vq.embedding, frozen)  # no updates in eval mode


def test_dead_codes_restarted_from_encoder_outputs():
    vq = _vq(dead_code_threshold=1.0)
    vq.cluster_size.fill_(10.0)
    vq.cluster_size[3] = 0.0
    old = vq.embedding.detach().clone()
    z = torch.randn(2, 4, 3, 3)
    vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.isclose(flat, vq.embedding[3].detach()).all(1).any()  # a row of the batch
    keep = torch.arange(8) != 3
    assert torch.equal(vq.embedding.detach()[keep], old[keep])


def test_error_restarts_go_to_the_worst_coded_outputs():
    """restart_from="error" draws replacements by squared distance to the nearest code: in a batch of 35 outputs
    that sit on live codes and one far from every code, every dead code restarts on that one; uniform draws
    would pick it for a dead code with probability 1/36."""
    for restart_from, expect_all in (("error", True), ("uniform", False)):
        torch.manual_seed(0)
        vq = _vq(dead_code_threshold=1.0, restart_from=restart_from)
        live = torch.eye(4) * 2
        vq.embedding.data[:4] = live
        vq.cluster_size.fill_(10.0)
        vq.cluster_size[4:] = 0.0  # four dead codes
        flat = live.repeat(9, 1)  # 36 rows on the live codes ...
        flat[-1] = torch.tensor([9.0, -9.0, 9.0, -9.0])  # ... but one
        vq(flat.view(1, 6, 6, 4).permute(0, 3, 1, 2))
        restarted = vq.embedding.detach()[4:]
        on_far = torch.isclose(restarted, flat[-1]).all(1)
        assert bool(on_far.all()) == expect_all, (restart_from, restarted)
    with pytest.raises(ConfigError, match="restart_from='kmeans'"):
        _vq(restart_from="kmeans")


def test_first_batch_initialises_codebook():
    vq = _vq()  # counts start at 0: every code is dead and restarted from the batch
    z = torch.randn(4, 4, 4, 4)
    vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert (vq.embedding.detach()[:, None] == flat[None]).all(-1).any(1).all()


@pytest.mark.parametrize("ema", [False, True])
def test_nonfinite_batch_leaves_codebook_alone(ema):
    vq = _vq(ema=ema)
    z = torch.randn(4, 4, 4, 4)
    vq(z)
    vq.cluster_size[:2] = 0  # two dead codes that a finite batch would restart
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    z[0, 0, 0, 0] = float("nan")
    vq(z)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_deterministic(ema):
    z = torch.randn(2, 4, 3, 3)
    books = []
    for seed in (0, 0, 1):
        torch.manual_seed(123)
        vq = _vq(ema=ema)
        torch.manual_seed(seed)
        for _ in range(3):
            vq(z)
        books.append(vq.embedding.detach().clone())
    assert torch.equal(books[0], books[1])
    assert not torch.equal(books[0], books[2])


# ----------------------------------------------------------------------------- EMA
def test_parameter_ema():
    src = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(src, decay=0.5, start_step=2)
    assert set(ema.state_dict()) == {"module." + k for k in src.state_dict()}
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        src[0].weight.fill_(1.0)
    ema.update(1)  # before start_step: copy
    torch.testing.assert_close(ema.module[0].weight, torch.ones(2, 2))
    with torch.no_grad():
        src[0].weight.fill_(3.0)
    src(torch.randn(4, 2))  # moves BatchNorm buffers
    ema.update(2)
    torch.testing.assert_close(ema.module[0].weight, torch.full((2, 2), 2.0))
    torch.testing.assert_close(ema.module[1].running_mean, src[1].running_mean)


def test_ema_update_costs_a_fixed_number_of_kernels_and_follows_a_dtype_change():
    """The EMA update of a DCGAN generator (9 buffers in two dtypes) launches a handful of kernels, not two per
    buffer; with ok false it leaves parameters and buffers as they were; after ``.double()`` (new buffers) it
    copies into the new ones."""
    from tests.conftest import CountKernels

    src = DCGANGenerator(8, 3, 32, 8)
    ema = EMA(src, decay=0.9)
    ok = torch.tensor(True)
    ema.update(1, ok=ok)  # the first update walks and flattens once
    src(torch.randn(4, 8))  # moves every BatchNorm statistic and counter
    with CountKernels() as update:
        ema.update(1, ok=ok)
    assert update.count <= 8, update.count  # ok.to, a multiply, one lerp; a cat and a where per dtype
    assert all(torch.equal(a, b) for a, b in zip(ema.module.buffers(), src.buffers()))
    before = [t.clone() for t in (*ema.module.parameters(), *ema.module.buffers())]
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    src(torch.randn(4, 8))
    ema.update(1, ok=torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, (*ema.module.parameters(), *ema.module.buffers())))
    src.double(), ema.double()
    src(torch.randn(4, 8, dtype=torch.float64))
    ema.update(1)
    assert all(b.dtype != torch.float32 for b in ema.module.buffers())
    assert all(torch.equal(a, b) for a, b in zip(ema.module.buffers(), src.buffers()))
