"""The default run's recipe (SN-DCGAN: hinge loss, spectral norm in D, nearest-neighbour G, Adam(beta1=0), EMA
generator) as a plain PyTorch loop trained for a wall-clock budget, then scored as the `val` protocol scores it
(FID of 512 EMA samples against the 512 val images, Inception features from mmexp.metrics). It asks which recipe
gets furthest in the default run's CPU time, with every knob a flag and nothing of the framework in the loop:
experiments/README.md, "the default run", has its table. Run on an otherwise idle machine, one at a time:

    python experiments/default_gan_budget.py --seconds 270 --width 16 --tag w16
    # the recipe of model=dcgan_r1 (the default since session 12): BatchNorm D, non-saturating loss + lazy R1, fake reuse
    python experiments/default_gan_budget.py --seconds 270 --width 16 --sn 0 --loss ns --r1 0.1 --reuse 1

The val features are computed once and kept in --cache (a second run takes ~1 minute to score). The framework's
own run of the chosen recipe is `python -m mmexp`; its number, not this script's, is the one the README gives.
"""
import argparse, json, os, time

import torch
import torch.nn.functional as F
import torchvision
from mmexp.networks.cgan import ProjectionDiscriminator
from mmexp.networks.dcgan import DCGANGenerator, DCGANDiscriminator
from mmexp.ema import EMA
from mmexp.metrics.frechet import frechet_distance_from_features
from mmexp.metrics.networks import MetricNetworks
from mmexp.data.shapes import ShapesDataset
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=240); p.add_argument("--iters", type=int, default=0)
p.add_argument("--width", type=int, default=32); p.add_argument("--gwidth", type=int, default=0); p.add_argument("--dwidth", type=int, default=0)
p.add_argument("--cl", type=int, default=1); p.add_argument("--bf16", type=int, default=0)
p.add_argument("--bs", type=int, default=64); p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--lrd", type=float, default=0); p.add_argument("--ema", type=float, default=0.995)
p.add_argument("--reuse", type=int, default=0); p.add_argument("--fullres", type=int, default=0)
p.add_argument("--seed", type=int, default=42); p.add_argument("--latent", type=int, default=100)
p.add_argument("--beta2", type=float, default=0.999); p.add_argument("--tag", default="")
p.add_argument("--decay_start", type=float, default=0.0); p.add_argument("--ndata", type=int, default=4096)
p.add_argument("--cache", default=os.path.expanduser("~/.cache/mmexp/default_gan_budget_val_features.pt")); p.add_argument("--decay_lr", type=int, default=0)
p.add_argument("--dstd", type=int, default=0, help="SNGAN's standard CNN D: a 3x3 stride-1 conv before each stride-2 one")
p.add_argument("--sn", type=int, default=1)
p.add_argument("--loss", default="hinge", choices=["hinge", "ns", "rp"],
               help="rp: relativistic pairing (RpGAN; R3GAN, Huang et al. 2024): softplus of the paired logit gaps")
p.add_argument("--r1", type=float, default=0.0); p.add_argument("--r1_every", type=int, default=4)
p.add_argument("--r2", type=float, default=0.0, help="R2: the gradient penalty on the fakes (lazy, as R1)")
p.add_argument("--beta1", type=float, default=0.0); p.add_argument("--gsn", type=int, default=0, help="spectral norm in G")
p.add_argument("--augment", default="", help="DiffAugment policies, comma-separated, e.g. translation")
p.add_argument("--upsample", default="nearest", choices=["nearest", "pixel_shuffle", "transposed"], help="G's upsampling")
p.add_argument("--dnorm", default="bn", choices=["bn", "none", "joint"],
               help="D's BatchNorm: bn (real and fake batches apart), none (no normalisation), joint (one batch of both)")
p.add_argument("--mbstd", type=int, default=0, help="ProGAN's minibatch standard deviation channel before D's head")
p.add_argument("--gskip", type=int, default=0, help="StyleGAN2's skip G: every resolution adds its own RGB, upsampled")
p.add_argument("--cat", type=int, default=0,
               help="K > 0: the last K latent entries are a one-hot category drawn uniformly (a discrete latent)")
p.add_argument("--gnorm", default="bn", choices=["bn", "none", "pixel"],
               help="G's normalisation: BatchNorm, none (biases instead), ProGAN's pixel norm (+ biases)")
p.add_argument("--dself", type=float, default=0.0,
               help="w > 0: FastGAN's self-supervised D, a small decoder rebuilds the real images from D's last "
                    "features (weight w on the MSE, D step only)")
p.add_argument("--ae", type=float, default=0.0,
               help="w > 0: VAE-GAN (Larsen et al. 2016): an encoder E of D's shape maps real images to q(z|x), G also "
                    "decodes them (weight w on the L1 reconstruction, G step), KL to N(0, I) weighted --ae_kl per pixel")
p.add_argument("--gch", default="",
               help="G's channels per resolution from 4 px up, e.g. 128,64,16 (4, 8, 16 px; a 4th entry adds a hidden "
                    "layer at 32 px): capacity where the geometry is decided, not where it is costly")
p.add_argument("--cond", type=int, default=0,
               help="class-conditional (the data's label: the first object's shape): one-hot label in G's latent, a "
                    "projection head in D (Miyato & Koyama 2018); fake labels drawn from the training labels")
p.add_argument("--ae_kl", type=float, default=1.0); p.add_argument("--ae_every", type=int, default=1)
p.add_argument("--patch", type=int, default=0,
               help="PatchGAN head: D's last 4x4 conv becomes a 1x1 conv, one logit per cell of its 4x4 map (each sees "
                    "a 22 px window), the losses averaged over cells")
p.add_argument("--dfull", type=int, default=0,
               help="D sees the full resolution: a 3x3 stride-1 conv (D's width) + LeakyReLU at 32 px before its first "
                    "stride-2 conv (BatchNorm elsewhere as usual)")
p.add_argument("--standing", type=int, default=0, help="also score with the EMA G's BatchNorm statistics recomputed")
a = p.parse_args()
if a.cond and (a.augment or a.dnorm != "bn" or a.dself or a.loss == "rp" or not a.reuse or a.cat or a.mbstd or a.patch
               or a.dfull or a.dstd or a.ae):
    p.error("--cond is built for the default's recipe only: --reuse 1, BatchNorm D, --loss ns or hinge, and none of "
            "--augment/--dself/--cat/--mbstd/--patch/--dfull/--dstd/--ae")
if a.gch and (a.gskip or a.fullres or a.gwidth or a.upsample != "nearest" or a.gnorm != "bn"):
    p.error("--gch builds its own G: not with --gskip/--fullres/--gwidth/--upsample/--gnorm")
torch.set_num_threads(2); torch.manual_seed(a.seed)
kw = dict(image_size=32, channels=3, num_train=a.ndata, num_val=512, num_test=512, min_shapes=1, max_shapes=3, seed=42,
          cache_dir=os.path.expanduser("~/.cache/mmexp/datasets"))
tr = ShapesDataset("train", **kw)
X = torch.stack([tr[i]["image"] for i in range(len(tr))])
Y = torch.tensor([int(tr[i]["label"]) for i in range(len(tr))])
G = DCGANGenerator(a.latent, 3, 32, a.gwidth or a.width, upsample=a.upsample, full_res_layer=bool(a.fullres))
if a.cond:  # mmexp's projection D (Miyato & Koyama 2018) on the same trunk; the labels as one-hot condition vectors
    NC = int(Y.max()) + 1
    D = ProjectionDiscriminator(3, 32, a.dwidth or a.width, cond_dim=NC, spectral_norm=bool(a.sn))
else:
    D = DCGANDiscriminator(3, 32, a.dwidth or a.width, spectral_norm=bool(a.sn))
if a.dstd:
    from torch import nn
    c, layers = 3, []
    for i in range(3):
        w = a.width * 2 ** i
        layers += [nn.Conv2d(c, w, 3, 1, 1), nn.LeakyReLU(0.1, True), nn.Conv2d(w, w, 4, 2, 1), nn.LeakyReLU(0.1, True)]
        c = w
    layers += [nn.Conv2d(c, 2 * c, 3, 1, 1), nn.LeakyReLU(0.1, True), nn.Conv2d(2 * c, 1, 4, 1, 0)]
    D = nn.Sequential(*layers, nn.Flatten(0))
    if a.sn:
        for m in [m for m in D.modules() if isinstance(m, nn.Conv2d)]:
            nn.utils.parametrizations.spectral_norm(m)
if a.dfull:
    w = a.dwidth or a.width
    D.features = torch.nn.Sequential(torch.nn.Conv2d(3, w, 3, 1, 1, bias=False), torch.nn.LeakyReLU(0.2, True),
                                     torch.nn.Conv2d(w, w, 4, 2, 1, bias=False), *list(D.features)[1:])
    from mmexp.networks.dcgan import dcgan_init
    D.features.apply(dcgan_init)
if a.patch:
    D.head = torch.nn.Conv2d(D.feature_channels, 1, 1, 1, 0, bias=False)
    torch.nn.init.normal_(D.head.weight, 0, 0.02)
if a.gnorm != "bn":
    class PixelNorm(torch.nn.Module):
        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)
    for m in G.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is None:
            m.bias = torch.nn.Parameter(torch.zeros(m.out_channels))
    G.net = torch.nn.Sequential(*[(PixelNorm() if a.gnorm == "pixel" else torch.nn.Identity())
                                  if isinstance(m, torch.nn.BatchNorm2d) else m for m in G.net])
if a.dnorm == "none":
    D.features = torch.nn.Sequential(*[m for m in D.features if not isinstance(m, torch.nn.BatchNorm2d)])
if a.mbstd:
    class MbStd(torch.nn.Module):  # ProGAN: the batch's feature std as one more constant channel (groups of 4)
        def forward(self, x):
            b, c, h, w = x.shape; g = min(4, b)
            y = x.float().view(g, -1, c, h, w); y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean([1, 2, 3])
            return torch.cat([x, y.view(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)], 1)
    Dh = torch.nn.Conv2d(D.feature_channels + 1, 1, D.feature_size, 1, 0, bias=False)
    torch.nn.init.normal_(Dh.weight, 0, 0.02)
    D = torch.nn.Sequential(D.features, MbStd(), Dh, torch.nn.Flatten(0))
if a.gskip:
    from torch import nn
    class SkipG(nn.Module):  # StyleGAN2's output skips on the DCGAN G: each stage adds a 1x1 toRGB, upsampled and summed
        def __init__(self, latent, width):
            super().__init__()
            ch = width * 4
            self.stem = nn.Sequential(nn.ConvTranspose2d(latent, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True))
            self.blocks, self.rgbs = nn.ModuleList(), nn.ModuleList([nn.Conv2d(ch, 3, 1)])
            for _ in range(3):
                co = max(ch // 2, width)
                self.blocks.append(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch, co, 3, 1, 1, bias=False),
                                                 nn.BatchNorm2d(co), nn.ReLU(True)))
                self.rgbs.append(nn.Conv2d(co, 3, 1)); ch = co
            from mmexp.networks.dcgan import dcgan_init
            self.apply(dcgan_init)
        def forward(self, z):
            h = self.stem(z.view(z.shape[0], -1, 1, 1)); rgb = self.rgbs[0](h)
            for blk, to in zip(self.blocks, self.rgbs[1:]):
                h = blk(h); rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + to(h)
            return torch.tanh(rgb)
    G = SkipG(a.latent, a.gwidth or a.width)
if a.gch:
    from torch import nn
    from mmexp.networks.dcgan import dcgan_init
    ch = [int(c) for c in a.gch.split(",")]
    layers = [nn.ConvTranspose2d(a.latent, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
    for ci, co in zip(ch, ch[1:]):
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ci, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU(True)]
    if len(ch) == 3:
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch[-1], 3, 3, 1, 1)]
    else:
        layers += [nn.Conv2d(ch[-1], 3, 3, 1, 1)]
    G = nn.Sequential(*layers, nn.Tanh()); G.apply(dcgan_init)
    G = nn.Sequential(nn.Unflatten(1, (a.latent, 1, 1)), G)
if a.cl:
    G = G.to(memory_format=torch.channels_last); D = D.to(memory_format=torch.channels_last)
    X = X.contiguous(memory_format=torch.channels_last)
if a.gsn:  # SAGAN / BigGAN: spectral norm in G's convolutions too (before the EMA copies G)
    for m in [m for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]:
        torch.nn.utils.parametrizations.spectral_norm(m)
ema = EMA(G, a.ema)
if a.augment:
    from mmexp.networks.diffaugment import DiffAugment
    D = torch.nn.Sequential(DiffAugment(a.augment.split(",")), D)
dec = None
if a.dself:
    from torch import nn
    c = D.feature_channels
    layers = []
    for i in range(3):  # 4x4 -> 32x32: c, c/2, c/4 channels, then RGB
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c >> i, c >> (i + 1) if i < 2 else 3, 3, 1, 1),
                   nn.ReLU(True) if i < 2 else nn.Tanh()]
    dec = nn.Sequential(*layers)
    if a.cl: dec = dec.to(memory_format=torch.channels_last)
E = None
if a.ae:
    E = DCGANDiscriminator(3, 32, a.dwidth or a.width)
    E.head = torch.nn.Conv2d(E.feature_channels, 2 * a.latent, E.feature_size, 1, 0)
    torch.nn.init.normal_(E.head.weight, 0, 0.02); torch.nn.init.zeros_(E.head.bias)
    if a.cl: E = E.to(memory_format=torch.channels_last)
oe = torch.optim.Adam(E.parameters(), a.lr, betas=(0.5, 0.999), fused=True) if E is not None else None
og = torch.optim.Adam(G.parameters(), a.lr, betas=(a.beta1, a.beta2), fused=True)
od = torch.optim.Adam(list(D.parameters()) + (list(dec.parameters()) if dec is not None else []), a.lrd or a.lr, betas=(a.beta1, a.beta2), fused=True)
def noise(n, generator=None):
    z = torch.randn(n, a.latent, generator=generator)
    if a.cond:  # the labels' empirical distribution, in the last NC entries of z
        z[:, -NC:] = F.one_hot(Y[torch.randint(len(Y), (n,), generator=generator)], NC).float()
    if a.cat:  # a discrete switch: G can jump between the data's modes instead of crossing the gaps between them
        k = torch.randint(a.cat, (n,), generator=generator)
        z[:, -a.cat:] = F.one_hot(k, a.cat).float()
    return z
ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16))
t0 = time.perf_counter(); it = 0; perm = torch.randperm(len(X)); pos = 0
while True:
    if a.iters and it >= a.iters: break
    if not a.iters and time.perf_counter() - t0 > a.seconds: break
    if pos + a.bs > len(X): perm = torch.randperm(len(X)); pos = 0
    real, yr = X[perm[pos:pos + a.bs]], Y[perm[pos:pos + a.bs]]; pos += a.bs
    if a.decay_lr:
        frac = (it / a.iters) if a.iters else (time.perf_counter() - t0) / a.seconds
        f = min(1.0, max(0.0, (1 - frac) / (1 - a.decay_start))) if frac > a.decay_start else 1.0
        for o, base in ((og, a.lr), (od, a.lrd or a.lr)):
            for gr in o.param_groups: gr["lr"] = base * f
    z = noise(a.bs)
    with ac():
        if a.reuse:
            fake_g = G(z); fake = fake_g.detach()
        else:
            with torch.no_grad(): fake = G(z)
        r1_now = a.r1 > 0 and it % a.r1_every == 0
        r2_now = a.r2 > 0 and it % a.r1_every == 0
        if r1_now: real = real.detach().requires_grad_(True)
        if r2_now: fake = fake.detach().requires_grad_(True)
        if a.dnorm == "joint":
            dr, df = D(torch.cat([real, fake])).split(a.bs)
        elif dec is not None:
            hr = D.features(real); dr = D.head(hr).flatten(); df = D(fake)
        elif a.cond:
            yf = z[:, -NC:]; dr, df = D(real, F.one_hot(yr, NC).float()), D(fake, yf)
        else:
            dr, df = D(real), D(fake)
        if a.loss == "hinge":
            ld = F.relu(1 - dr).mean() + F.relu(1 + df).mean()
        elif a.loss == "rp":
            ld = F.softplus(-(dr - df)).mean()
        else:
            ld = F.softplus(-dr).mean() + F.softplus(df).mean()
        if dec is not None:
            ld = ld + a.dself * F.mse_loss(dec(hr).float(), real.detach().float())
        if r1_now:  # lazy R1 (Mescheder et al. 2018; StyleGAN2's lazy schedule): gamma/2 * |grad_x D(x)|^2
            grad, = torch.autograd.grad(dr.float().view(a.bs, -1).mean(1).sum(), real, create_graph=True)
            ld = ld + a.r1 / 2 * a.r1_every * grad.float().pow(2).flatten(1).sum(1).mean()
        if r2_now:
            grad, = torch.autograd.grad(df.float().view(a.bs, -1).mean(1).sum(), fake, create_graph=True)
            ld = ld + a.r2 / 2 * a.r1_every * grad.float().pow(2).flatten(1).sum(1).mean()
    od.zero_grad(set_to_none=True); ld.backward(); od.step()
    with ac():
        if not a.reuse: fake_g = G(noise(a.bs))
        D.requires_grad_(False)
        if a.cond:
            dg = D(fake_g, yf)
        else:
            dg = D(torch.cat([real.detach(), fake_g]))[a.bs:] if a.dnorm == "joint" else D(fake_g)
        if a.loss == "rp":  # the pairs' real logits under the updated D (no gradient: G's loss moves G only)
            with torch.no_grad(): dr_g = D(real.detach())
            lg = F.softplus(-(dg.float() - dr_g.float())).mean()
        else:
            lg = -dg.float().mean() if a.loss == "hinge" else F.softplus(-dg.float()).mean()
        D.requires_grad_(True)
    og.zero_grad(set_to_none=True)
    if E is not None and it % a.ae_every == 0:
        with ac():
            mu, logvar = E.head(E.features(real.detach())).flatten(1).float().chunk(2, 1)
            zq = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            rec = G(zq)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean() / real[0].numel()
            lg = lg + a.ae * ((rec.float() - real.detach().float()).abs().mean() + a.ae_kl * kl)
        oe.zero_grad(set_to_none=True)
    lg.backward(); og.step()
    if E is not None and it % a.ae_every == 0: oe.step()
    ema.update(it)
    it += 1
train_s = time.perf_counter() - t0
nets = MetricNetworks()
def feats(x):
    return nets.features(x, False)[0]
RF = a.cache
if not os.path.exists(RF):
    va = ShapesDataset("val", **kw)
    with torch.inference_mode(): torch.save(feats(torch.stack([va[i]["image"] for i in range(512)])), RF)
real_f = torch.load(RF, weights_only=True)
g = torch.Generator().manual_seed(0)
ema.module.eval()
with torch.inference_mode():
    imgs = torch.cat([ema.module(noise(128, g)).clamp(-1, 1) for _ in range(4)]).contiguous()
    fake_f = feats(imgs)
fid = frechet_distance_from_features(fake_f.double(), real_f.double())
torchvision.utils.save_image(imgs[:64] * 0.5 + 0.5, f"default_gan_budget_{a.tag or 'grid'}.png", nrow=8)
extra = {}
if a.standing:
    # the EMA copies the live G's BatchNorm statistics, which belong to the live weights, not the averaged ones:
    # recompute them for the averaged weights (cumulative average over 16 batches of fresh noise)
    bns = [m for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats(); m.momentum = None
    ema.module.train()
    with torch.no_grad():
        for _ in range(16): ema.module(noise(128))
    ema.module.eval()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        imgs = torch.cat([ema.module(noise(128, g)).clamp(-1, 1) for _ in range(4)]).contiguous()
        extra["fid_standing"] = round(frechet_distance_from_features(feats(imgs).double(), real_f.double()), 2)
    torchvision.utils.save_image(imgs[:64] * 0.5 + 0.5, f"default_gan_budget_{a.tag or 'grid'}_standing.png", nrow=8)
print("RESULT", json.dumps({**vars(a), "iters": it, "train_s": round(train_s, 1), "ms_it": round(1000 * train_s / it, 1),
                            "fid": round(fid, 2), **extra}), flush=True)
