"""What the `val` protocol's FID says about real images, intact and damaged: 512 train images of the default run's
shapes (32 px) against the 512 val images, with mmexp's Inception features, as `experiments/default_gan_budget.py`
scores its samples. It gives the protocol's floor (real against real) and what soft edges or a lower resolution
alone cost, and what wrong geometry costs (each object redrawn, in its own colour, size and place, as a circle or a
square), to compare with the generated samples' FID (experiments/README.md, "the default run").

    python experiments/fid_of_damaged_reals.py
"""
import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from mmexp.data.shapes import Scene, ShapesDataset
from mmexp.data.transforms import pil_to_tensor
from mmexp.metrics.frechet import frechet_distance_from_features
from mmexp.metrics.networks import MetricNetworks

torch.set_num_threads(2)
kw = dict(image_size=32, channels=3, num_train=4096, num_val=512, num_test=512, min_shapes=1, max_shapes=3, seed=42,
          cache_dir=os.path.expanduser("~/.cache/mmexp/datasets"))
nets = MetricNetworks()


def features(x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return nets.features(x.contiguous(), False)[0].double()


val = ShapesDataset("val", **kw)
real_f = features(torch.stack([val[i]["image"] for i in range(512)]))
train = ShapesDataset("train", **kw)
x = torch.stack([train[i]["image"] for i in range(512)])
damage = {
    "none (the protocol's floor)": x,
    **{f"Gaussian blur, sigma {s} px": TF.gaussian_blur(x, 5, s) for s in (0.5, 0.8, 1.2)},
    "16 px (2x2 average), bilinear back to 32 px": F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear"),
}


def redrawn(kind: str, p: float, seed: int = 0) -> torch.Tensor:
    """The same 512 train scenes with each object, with probability p, drawn as a `kind` (in its own colour, size
    and place) instead of its own shape; a quarter of the objects already are circles, a quarter squares."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(x)):
        scene = train.scene(i)
        objects = tuple(dataclasses.replace(o, shape=kind) if rng.random() < p else o for o in scene.objects)
        out.append(pil_to_tensor(train.render(Scene(scene.background, objects))[0]))
    return torch.stack(out)


assert torch.equal(redrawn("circle", 0.0), x), "re-rendering the scenes must give the dataset's own images"
for p in (0.25, 0.5, 0.75, 1.0):
    damage[f"{p:.0%} of the objects drawn as circles"] = redrawn("circle", p)
damage["50% as circles, then blur sigma 0.8 px"] = TF.gaussian_blur(damage["50% of the objects drawn as circles"], 5, 0.8)
damage["every object drawn as a square"] = redrawn("square", 1.0)
for name, images in damage.items():
    print(f"{name:45s} FID {frechet_distance_from_features(features(images), real_f):6.1f}", flush=True)
