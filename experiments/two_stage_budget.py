"""A two-stage generator for the default run's data, as a plain loop: can it beat the GAN in the same CPU minutes?

Stage 1 is a VQ-VAE (mmexp's Encoder / VectorQuantizer with an EMA codebook / Decoder) trained to reconstruct the
32 px shapes; stage 2 a GPT (mmexp's CodeTransformer, unconditional: one constant condition token) over its code
grid. Sampling draws codes one position at a time (key/value cache) and decodes them. Scored as the `val` protocol
(512 samples against the 512 val images, mmexp's Inception features), and the stage-1 reconstructions of 512 train
images likewise (rFID: the floor stage 2 can reach).

    python experiments/two_stage_budget.py --s1_iters 1500 --s2_iters 3000 --seed 1
"""
import argparse, json, math, os, time

import torch
import torch.nn.functional as F
import torchvision

from mmexp.data.shapes import ShapesDataset
from mmexp.metrics.frechet import frechet_distance_from_features
from mmexp.metrics.networks import MetricNetworks
from mmexp.models.vq_prior import draw
from mmexp.networks.autoencoder import Decoder, Encoder
from mmexp.networks.transformer import CodeTransformer
from mmexp.networks.vqvae import VectorQuantizer

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=1)
p.add_argument("--s1_iters", type=int, default=1500)
p.add_argument("--s2_iters", type=int, default=3000)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--s2_bs", type=int, default=64)
p.add_argument("--codes", type=int, default=128)
p.add_argument("--code_dim", type=int, default=32)
p.add_argument("--width", type=int, default=32)
p.add_argument("--mults", type=str, default="1,2,2", help="encoder levels: 1,2,2 = 8x8 codes; 1,2,2,2 = 4x4")
p.add_argument("--res", type=int, default=1, help="residual blocks per level")
p.add_argument("--lr1", type=float, default=1e-3)
p.add_argument("--lr2", type=float, default=1e-3)
p.add_argument("--beta", type=float, default=0.25)
p.add_argument("--l1", type=int, default=0, help="L1 reconstruction instead of MSE")
p.add_argument("--dim", type=int, default=128)
p.add_argument("--depth", type=int, default=4)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--temperature", type=float, default=1.0)
p.add_argument("--top_k", type=int, default=0)
p.add_argument("--ndata", type=int, default=4096)
p.add_argument("--tag", type=str, default="")
p.add_argument("--cache", type=str, default="/tmp/val_feats_shapes32.pt")
a = p.parse_args()
torch.set_num_threads(2); torch.manual_seed(a.seed)
kw = dict(image_size=32, channels=3, num_train=a.ndata, num_val=512, num_test=512, min_shapes=1, max_shapes=3, seed=42,
          cache_dir=os.path.expanduser("~/.cache/mmexp/datasets"))
tr = ShapesDataset("train", **kw)
X = torch.stack([tr[i]["image"] for i in range(len(tr))])
mults = [int(m) for m in a.mults.split(",")]
E = Encoder(3, 32, a.code_dim, a.width, mults, a.res)
Q = VectorQuantizer(a.codes, a.code_dim, ema=True, decay=0.99, dead_code_threshold=1.0)
Dd = Decoder(3, a.code_dim, a.width, mults, a.res)
for m in (E, Q, Dd):
    m.to(memory_format=torch.channels_last)
o1 = torch.optim.Adam([*E.parameters(), *Dd.parameters()], lr=a.lr1)
t0 = time.perf_counter()
for it in range(a.s1_iters):
    x = X[torch.randint(len(X), (a.bs,))].contiguous(memory_format=torch.channels_last)
    q = Q(E(x))
    rec = Dd(q.quantized)
    lr = (rec - x).abs().mean() if a.l1 else F.mse_loss(rec, x)
    loss = lr + a.beta * q.commitment
    o1.zero_grad(set_to_none=True); loss.backward(); o1.step()
    if it % 500 == 0:
        print(f"s1 {it} rec {lr.item():.4f} psnr {10 * torch.log10(4 / F.mse_loss(rec, x)).item():.2f}", flush=True)
s1_s = time.perf_counter() - t0
E.eval(); Q.eval(); Dd.eval()
with torch.inference_mode():
    codes = torch.cat([Q(E(X[i:i + 256])).indices for i in range(0, len(X), 256)])
    recon = torch.cat([Dd(Q(E(X[i:i + 256])).quantized).clamp(-1, 1) for i in range(0, 512, 256)])
    psnr = 10 * torch.log10(4 / F.mse_loss(recon, X[:512])).item()
grid = codes.shape[1:]
codes = codes.flatten(1)
used = codes.unique().numel()
print(f"stage 1: {s1_s:.0f} s, grid {tuple(grid)}, {used}/{a.codes} codes used, psnr {psnr:.2f}", flush=True)
T = CodeTransformer(a.codes, tuple(grid), 1, a.dim, a.depth, a.heads)
o2 = torch.optim.AdamW(T.parameters(), lr=a.lr2, betas=(0.9, 0.95), weight_decay=0.01)
cond = torch.zeros(a.s2_bs, 1, 1); cmask = torch.ones(a.s2_bs, 1, dtype=torch.bool)
t0 = time.perf_counter()
for it in range(a.s2_iters):
    c = codes[torch.randint(len(codes), (a.s2_bs,))]
    lr_now = a.lr2 * min(1.0, (it + 1) / 100) * 0.5 * (1 + math.cos(math.pi * it / a.s2_iters))  # warm-up, cosine
    for g in o2.param_groups: g["lr"] = lr_now
    loss = F.cross_entropy(T(c, cond, cmask).flatten(0, 1), c.flatten())
    o2.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(T.parameters(), 1.0)
    o2.step()
    if it % 500 == 0:
        print(f"s2 {it} ce {loss.item():.3f}", flush=True)
s2_s = time.perf_counter() - t0
print(f"stage 2: {s2_s:.0f} s, last ce {loss.item():.3f}", flush=True)

T.eval()
g = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
imgs = []
with torch.inference_mode():
    for _ in range(4):
        n = 128
        u = torch.rand(n, T.length, generator=g)  # one uniform per code, drawn by inverse CDF (model=vq_prior's draw)
        logits, state = T.start(torch.zeros(n, 1, 1), torch.ones(n, 1, dtype=torch.bool))
        out = [draw(logits, u[:, 0], top_k=a.top_k, temperature=a.temperature)]
        for j in range(1, T.length):
            out.append(draw(T.step(out[-1], state), u[:, j], top_k=a.top_k, temperature=a.temperature))
        idx = torch.stack(out, 1).view(n, *grid)
        zq = F.embedding(idx, Q.embedding).permute(0, 3, 1, 2)
        imgs.append(Dd(zq).clamp(-1, 1))
imgs = torch.cat(imgs).contiguous()
samp_s = time.perf_counter() - t0
nets = MetricNetworks()
def feats(x):
    return nets.features(x.contiguous(), False)[0]
if not os.path.exists(a.cache):
    va = ShapesDataset("val", **kw)
    with torch.inference_mode(): torch.save(feats(torch.stack([va[i]["image"] for i in range(512)])), a.cache)
real_f = torch.load(a.cache, weights_only=True)
with torch.inference_mode():
    fid = frechet_distance_from_features(feats(imgs).double(), real_f.double())
    rfid = frechet_distance_from_features(feats(recon).double(), real_f.double())
tag = a.tag or "grid"
torchvision.utils.save_image(imgs[:64] * 0.5 + 0.5, f"two_stage_{tag}.png", nrow=8)
torchvision.utils.save_image(torch.cat([X[:32], recon[:32]]) * 0.5 + 0.5, f"two_stage_{tag}_recon.png", nrow=8)
print("RESULT", json.dumps({**vars(a), "s1_s": round(s1_s, 1), "s2_s": round(s2_s, 1), "sample_s": round(samp_s, 1),
                            "codes_used": used, "psnr": round(psnr, 2), "rfid": round(rfid, 2), "fid": round(fid, 2)}),
      flush=True)
