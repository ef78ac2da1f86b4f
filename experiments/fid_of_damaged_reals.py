"""What the `val` protocol's FID says about real images, intact and damaged: 512 train images of the default run's
shapes (32 px) against the 512 val images, with mmexp's Inception features, as `experiments/default_gan_budget.py`
scores its samples. It gives the protocol's floor (real against real) and what soft edges or a lower resolution
alone cost, to compare with the generated samples' FID (experiments/README.md, "the default run").

    python experiments/fid_of_damaged_reals.py
"""
import os

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from mmexp.data.shapes import ShapesDataset
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
for name, images in damage.items():
    print(f"{name:45s} FID {frechet_distance_from_features(features(images), real_f):6.1f}", flush=True)
