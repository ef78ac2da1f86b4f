"""Multi-frame super-resolution (issue 9): the temporal-convolution network, BasicVSR and its flow network,
the clip contract of the restoration models (centre frame for single-image methods, wrong window lengths
refused), and the configs training on clips with a degradation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmexp.config import build
from mmexp.degradations.resize import imresize
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses import LossSet
from mmexp.losses.flow import WarpingLoss
from mmexp.models.baselines import Bicubic
from mmexp.models.restoration import RestorationModel
from mmexp.networks.basicvsr import BasicVSR
from mmexp.networks.flow import SpyNetLite, flow_warp
from mmexp.networks.srresnet import MSRResNet
from mmexp.networks.temporal import TemporalConvSR
from mmexp.train import train
from tests.conftest import FAST, compose_cfg

TINY_TCN = {"num_feat": 8, "num_block": 1}
TINY_BASICVSR = {"num_feat": 8, "num_block": 1, "spynet": {"num_levels": 2, "channels": (4,), "kernel_size": 3}}


def clip(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("t", [3, 5])
@pytest.mark.parametrize("fusion", ["slow", "early"])
@pytest.mark.parametrize("scale", [2, 4])
def test_temporal_conv_sr_outputs_the_centre_frame_at_any_size(t, fusion, scale):
    net = TemporalConvSR(num_frames=t, fusion=fusion, upscale=scale, **TINY_TCN)
    x = clip(2, t, 7, 9)
    y = net(x)
    assert y.shape == (2, 3, 7 * scale, 9 * scale)
    # the residual starts small: the output is near the bilinear upsampling of the centre frame (MSRResNet's skip)
    bilinear = torch.nn.functional.interpolate(x[:, t // 2], scale_factor=scale, mode="bilinear",
                                               align_corners=False)
    assert (y - bilinear).abs().mean() < 0.05


@pytest.mark.parametrize("fusion", ["slow", "early"])
def test_temporal_conv_sr_is_msrresnet_on_the_centre_frame_plus_its_fusion(fusion):
    # the fair comparison of experiment=vsr_x4_video_cpu: the same trunk and high-resolution tail as the
    # single-frame model, under the same names, so only the temporal fusion differs
    torch.manual_seed(0)
    single = MSRResNet(num_feat=8, num_block=2, upscale=4)
    for p in single.parameters():  # away from the near-identity initialisation, so the tail really matters
        p.data.normal_(0, 0.2)
    net = TemporalConvSR(num_frames=5, fusion=fusion, num_feat=8, num_block=2, upscale=4)
    missing, unexpected = net.load_state_dict(single.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("fuse.") for k in missing)
    x = clip(2, 5, 6, 7)
    with torch.no_grad():
        for conv in net.fuse:
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(net(x), single(x[:, 2]), atol=1e-5, rtol=0)
        # the fusion reads the neighbours: switched on, a change of the first frame changes the output
        for conv in net.fuse:
            conv.weight.normal_(0, 0.2)
        changed = x.clone()
        changed[:, 0] = 0
        assert (net(x) - net(changed)).abs().max() > 1e-3
        assert (net(x) - single(x[:, 2])).abs().max() > 1e-3


@pytest.mark.parametrize("t", [3, 5])
def test_basicvsr_outputs_every_frame_at_any_size(t):
    net = BasicVSR(upscale=4, **TINY_BASICVSR)
    assert net(clip(2, t, 7, 9)).shape == (2, t, 3, 28, 36)
    assert net(clip(1, 1, 5, 6)).shape == (1, 1, 3, 20, 24)  # one frame: no flow, no propagation partner


@pytest.mark.parametrize("make", [lambda: TemporalConvSR(num_frames=5, **TINY_TCN),
                                  lambda: TemporalConvSR(num_frames=5, fusion="early", **TINY_TCN),
                                  lambda: BasicVSR(**TINY_BASICVSR)], ids=["tcn_slow", "tcn_early", "basicvsr"])
def test_multi_frame_output_uses_the_other_frames(make):
    torch.manual_seed(0)
    net = make().double()  # at initialisation the residual branches are small (0.1-scaled): measure in float64
    x = clip(2, 5, 8, 8).double()
    swapped = x[:, [4, 1, 2, 3, 0]]  # same centre frame, neighbours in another order
    changed = x.clone()
    changed[:, 0] = clip(2, 1, 8, 8, seed=1)[:, 0].double()  # another first frame
    with torch.no_grad():
        centre = lambda y: y[:, 2] if y.dim() == 5 else y
        y, y_swapped, y_changed = centre(net(x)), centre(net(swapped)), centre(net(changed))
    assert (y - y_swapped).abs().max() > 1e-9
    assert (y - y_changed).abs().max() > 1e-9


def test_temporal_conv_sr_refuses_a_wrong_number_of_frames_naming_both():
    net = TemporalConvSR(num_frames=5, **TINY_TCN)
    with pytest.raises(ShapeMismatchError, match=r"windows of 5 frames but got 3"):
        net(clip(1, 3, 8, 8))
    with pytest.raises(ShapeMismatchError, match=r"\[B, T, 3, h, w\]"):
        net(torch.zeros(1, 3, 8, 8))
    from mmexp.errors import ConfigError

    with pytest.raises(ConfigError, match="odd"):
        TemporalConvSR(num_frames=4)


# ------------------------------------------------------------------------------------------ flow
def test_flow_warp_zero_flow_is_the_identity():
    x = clip(2, 1, 7, 9)[:, 0]
    torch.testing.assert_close(flow_warp(x, torch.zeros(2, 2, 7, 9)), x, atol=1e-6, rtol=0)


def test_flow_warp_integer_flow_moves_pixels_exactly():
    x = clip(1, 1, 7, 9)[:, 0]
    flow = torch.zeros(1, 2, 7, 9)
    flow[:, 0], flow[:, 1] = 2, -1  # out[y, x] = x[y - 1, x + 2]
    out = flow_warp(x, flow, padding_mode="zeros")
    torch.testing.assert_close(out[:, :, 1:, :-2], x[:, :, :-1, 2:], atol=1e-6, rtol=0)
    assert out[:, :, 0].abs().max() == 0 and out[:, :, :, -2:].abs().max() == 0  # from outside: zeros
    # a per-pixel flow: each row shifted by its own amount
    flow = torch.zeros(1, 2, 7, 9)
    flow[0, 0] = torch.arange(7.0)[:, None] % 3
    out = flow_warp(x, flow, padding_mode="border")
    for y in range(7):
        s = y % 3
        torch.testing.assert_close(out[0, :, y, : 9 - s], x[0, :, y, s:], atol=1e-6, rtol=0)


def test_spynet_lite_starts_at_zero_flow_and_learns_a_shift():
    net = SpyNetLite(num_levels=2, channels=(8,), kernel_size=3)
    a = clip(2, 1, 9, 11)[:, 0]
    assert net(a, a.roll(1, dims=-1)).abs().max() == 0  # untrained: no alignment
    assert net(a, a).shape == (2, 2, 9, 11)
    with pytest.raises(ShapeMismatchError):
        net(a, a[..., :-1])


def test_warping_loss_teaches_spynet_lite_a_shift():
    """The photometric loss alone trains the flow network to the true motion: a smooth texture moved 1 px right
    per frame, so that warping frame i + 1 onto frame i needs flow x = +1 (and -1 the other way)."""
    torch.manual_seed(0)
    texture = F.avg_pool2d(clip(1, 1, 44, 44)[:, 0], 5, 1)  # 40 x 40, smooth enough for a gradient method
    frames = torch.stack([texture[..., 8:24, 10 - i:26 - i] for i in range(3)], dim=1)  # [1, 3, 3, 16, 16]
    net = BasicVSR(**TINY_BASICVSR)
    term = WarpingLoss(weight=1.0, smoothness=0.0)
    opt = torch.optim.Adam(net.spynet.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(term(frames, net))
    for _ in range(300):
        loss = term(frames, net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    backward, forward = net.flows(frames)
    inner = (..., slice(3, -3), slice(3, -3))
    with torch.no_grad():
        assert float(term(frames, net)) < 0.2 * before
    torch.testing.assert_close(backward[:, :, 0][inner].mean(), torch.tensor(1.0), atol=0.25, rtol=0)
    torch.testing.assert_close(forward[:, :, 0][inner].mean(), torch.tensor(-1.0), atol=0.25, rtol=0)
    assert backward[:, :, 1][inner].abs().mean() < 0.25
    with pytest.raises(ConfigError, match="flows"):
        term(frames, MSRResNet(num_feat=8, num_block=1))


# ------------------------------------------------------------------------------------------ the model contract
def _model(network) -> RestorationModel:
    from mmexp.losses.reconstruction import L1Loss

    return RestorationModel(network, LossSet({"l1": L1Loss()}), optimizer=lambda params: torch.optim.Adam(params))


def _clip_batch(t: int = 5, b: int = 2, size: int = 16, scale: int = 4) -> dict:
    target = clip(b, t, size, size)
    return {"input": imresize(target, scale=1 / scale), "target": target, "index": torch.arange(b)}


def test_single_frame_models_read_the_centre_frame_of_clips():
    batch = _clip_batch(t=5)
    centre_in, centre_out = batch["input"][:, 2], batch["target"][:, 2]
    model = _model(MSRResNet(num_feat=8, num_block=1, upscale=4))
    out = model.validation_step(batch, 0)
    torch.testing.assert_close(out["pred"], model.restore(centre_in))
    torch.testing.assert_close(out["target"], centre_out)
    peer = Bicubic(scale=4).validation_step(batch, 0)
    torch.testing.assert_close(peer["pred"], imresize(centre_in, scale=4.0).clamp(-1, 1))


def test_multi_frame_models_train_on_their_frames_and_are_scored_on_the_centre():
    batch = _clip_batch(t=5)
    recurrent = _model(BasicVSR(**TINY_BASICVSR))
    assert recurrent.clip_batch(batch, train=True)["target"].shape == (2, 5, 3, 16, 16)  # every frame supervised
    out = recurrent.validation_step(batch, 0)
    assert out["pred"].shape == out["target"].shape == (2, 3, 16, 16)
    torch.testing.assert_close(out["pred"], recurrent.restore(batch["input"])[:, 2])
    window = _model(TemporalConvSR(num_frames=5, **TINY_TCN))
    assert window.clip_batch(batch, train=True)["target"].shape == (2, 3, 16, 16)
    grid, k = window.preview(batch)
    assert grid.shape == (3 * 2, 3, 16, 16) and k == 2
    torch.testing.assert_close(grid[4:], batch["target"][:, 2])


def test_a_wrong_window_is_refused_naming_both_numbers():
    model = _model(TemporalConvSR(num_frames=5, **TINY_TCN))
    with pytest.raises(ShapeMismatchError, match=r"windows of 5 frames but the batch's clips have 3"):
        model.validation_step(_clip_batch(t=3), 0)
    with pytest.raises(ShapeMismatchError, match="use clip data"):
        model.validation_step({"input": torch.zeros(1, 3, 4, 4), "target": torch.zeros(1, 3, 16, 16)}, 0)
    with pytest.raises(ShapeMismatchError, match="restores clips"):
        model.restore(torch.zeros(1, 3, 3, 4, 4))


# ------------------------------------------------------------------------------------------ configs
MOVING = ["data=moving_shapes", "degradation=bicubic_x4", "data.dataset.num_train=8", "data.dataset.num_val=4",
          "data.dataset.num_test=4", "data.batch_size=2", "data.eval_batch_size=4", "metrics=restoration",
          "metrics.metrics=[psnr,ssim]", "metrics.y_channel=true", "metrics.crop_border=4", "debug=fdr"]
TINY_MODELS = {
    "vsr_tcn": ["model.network.num_feat=8", "model.network.num_block=1"],
    "basicvsr": ["model.network.num_feat=8", "model.network.num_block=1", "model.network.spynet.num_levels=2",
                 "model.network.spynet.channels=[4]"],
    "msrresnet": ["model.network.num_feat=8", "model.network.num_block=1"],
}


@pytest.mark.parametrize("model", sorted(TINY_MODELS))
def test_models_train_on_clips_with_a_degradation(tmp_path, model):
    cfg = compose_cfg(tmp_path, f"model={model}", *FAST, *MOVING, *TINY_MODELS[model],
                      "data.dataset.num_frames=3")
    metrics = train(cfg)
    assert metrics["val/psnr"] > 10
    grids = list((Path(cfg.paths.output_dir) / "samples").glob("*.png"))
    assert len(grids) == 1 and Image.open(grids[0]).size[1] == 3 * 32 + 4 * 2  # input | output | target, 32 px


def test_basicvsr_trains_with_the_warping_loss_on_its_flow(tmp_path):
    """loss=l1_warp: the model hands the clip and the network to the warping term (logged apart from L1)."""
    cfg = compose_cfg(tmp_path, "model=basicvsr", "loss=l1_warp", *FAST, *MOVING, *TINY_MODELS["basicvsr"],
                      "data.dataset.num_frames=3")
    metrics = train(cfg)
    assert metrics["train/loss/warp"] > 0 and metrics["val/psnr"] > 10
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss/l1"] + metrics["train/loss/warp"])


def test_vsr_tcn_follows_the_datas_window(tmp_path):
    cfg = compose_cfg(tmp_path, "model=vsr_tcn", "data=video", "data.dataset.num_frames=3")
    assert build(cfg.model.network).num_frames == 3


# ------------------------------------------------------------------------------------------ task=restore on clips
def test_windows_are_mirrored_at_the_ends_of_a_clip():
    from mmexp.restore import window_indices

    assert window_indices(0, 5, 5) == [2, 1, 0, 1, 2]
    assert window_indices(2, 5, 5) == [0, 1, 2, 3, 4]
    assert window_indices(4, 5, 5) == [2, 3, 4, 3, 2]
    assert window_indices(1, 3, 5) == [1, 0, 1, 2, 1]
    assert window_indices(0, 2, 3) == [1, 0, 1]
    assert window_indices(0, 1, 3) == [0, 0, 0]
    with pytest.raises(IndexError):
        window_indices(5, 5, 3)


@pytest.fixture(scope="module")
def clip_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny x4 vsr_tcn (3-frame windows) and BasicVSR, each trained for 2 steps on moving shapes: last.ckpt."""
    out = {}
    for model in ("vsr_tcn", "basicvsr"):
        tmp = tmp_path_factory.mktemp(model)
        cfg = compose_cfg(tmp, f"model={model}", *FAST, *[o for o in MOVING if o != "debug=fdr" and not o.startswith("metrics")], *TINY_MODELS[model],
                          "data.dataset.num_frames=3", "trainer.max_steps=2", "trainer.limit_val_batches=0",
                          "logger=none", "metrics=none")
        train(cfg)
        out[model] = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return out


def _real_frames(n: int, h: int = 12, w: int = 20) -> list:
    """``n`` uint8 ``[h, w, 3]`` crops of a real photo, panning 2 px a frame."""
    import numpy as np
    import skimage.data as skd

    a = skd.astronaut()
    return [np.ascontiguousarray(a[100: 100 + h, 120 + 2 * t: 120 + 2 * t + w]) for t in range(n)]


def _u8(x: torch.Tensor):
    return ((x.clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).numpy()


def _frame_tensor(a) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1


def test_task_restore_runs_a_window_model_on_every_frame_of_a_video(tmp_path, clip_checkpoints):
    """Each frame of a video, the first and last included, is restored from its mirrored 3-frame window."""
    import numpy as np

    cv2 = pytest.importorskip("cv2")
    import mmexp
    from mmexp.restore import restore

    video = tmp_path / "pan.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (20, 12))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    for f in _real_frames(4):
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    restore(compose_cfg(tmp_path, "task=restore", "trainer=cpu", f"ckpt_path={clip_checkpoints['vsr_tcn']}",
                        f"input={video}", f"out={out}"))
    assert sorted(p.name for p in (out / "pan").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    cap = cv2.VideoCapture(str(video))
    decoded = torch.stack([_frame_tensor(cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)) for _ in range(4)])
    cap.release()
    model = mmexp.load(clip_checkpoints["vsr_tcn"]).model
    for i, window in [(0, [1, 0, 1]), (2, [1, 2, 3]), (3, [2, 3, 2])]:
        expected = model.restore(decoded[window][None])[0]
        got = np.asarray(Image.open(out / "pan" / f"{i:06d}.png"))
        assert got.shape == (48, 80, 3)
        np.testing.assert_array_equal(got, _u8(expected))


def test_task_restore_runs_a_recurrent_model_on_frame_folders_in_chunks(tmp_path, clip_checkpoints):
    """Each folder of frames is its own clip; chunks with overlap cover every frame, and one chunk as long as the
    clip is the whole-clip pass."""
    import numpy as np

    import mmexp
    from mmexp.restore import restore

    frames = {"a": _real_frames(5), "b": _real_frames(2)}
    for name, clip_frames in frames.items():
        (tmp_path / "in" / name).mkdir(parents=True)
        for t, f in enumerate(clip_frames):
            Image.fromarray(f).save(tmp_path / "in" / name / f"f{t}.png")
    ckpt = clip_checkpoints["basicvsr"]
    model = mmexp.load(ckpt).model
    results = {}
    for chunk in (2, 8):
        out = tmp_path / f"out{chunk}"
        restore(compose_cfg(tmp_path, "task=restore", "trainer=cpu", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}",
                            f"out={out}", f"restore.clip_chunk={chunk}", "restore.chunk_overlap=1"))
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == \
            [f"a/f{t}.png" for t in range(5)] + ["b/f0.png", "b/f1.png"]
        results[chunk] = {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in out.rglob("*.png")}
    for name, clip_frames in frames.items():
        whole = model.restore(torch.stack([_frame_tensor(f) for f in clip_frames])[None])[0]
        for t in range(len(clip_frames)):
            np.testing.assert_array_equal(results[8][f"{name}/f{t}.png"], _u8(whole[t]))
    # chunks of 2 with 1 frame of context: the middle of clip a sees a shorter recurrence, yet every frame is there
    assert results[2]["a/f0.png"].shape == (48, 80, 3)


def test_full_eval_frames_are_cropped_to_a_multiple_of_mod(tmp_path):
    """data.dataset.mod crops whole eval frames at the bottom/right (BasicSR's mod_crop), so a x4 model can be
    tested on a clip whose sides are not multiples of 4; mod=1 keeps the frames as decoded."""
    import numpy as np
    from PIL import Image as PILImage

    from mmexp.data.video import VideoClipDataset

    folder = tmp_path / "clip"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for t in range(3):
        PILImage.fromarray(rng.integers(0, 255, (22, 35, 3), dtype=np.uint8)).save(folder / f"{t:03d}.png")
    sources = {"train": [str(folder)], "val": [str(folder)], "test": [str(folder)]}
    whole = VideoClipDataset("test", image_size=16, sources=sources, num_frames=3, eval_crops="full")[0]["frames"]
    cropped = VideoClipDataset("test", image_size=16, sources=sources, num_frames=3, eval_crops="full", mod=4)[0]
    assert whole.shape == (3, 3, 22, 35) and cropped["frames"].shape == (3, 3, 20, 32)
    torch.testing.assert_close(cropped["frames"], whole[..., :20, :32])
    with pytest.raises(Exception, match="mod"):
        VideoClipDataset("test", image_size=16, sources=sources, num_frames=3, eval_crops="full", mod=0)


def test_load_restore_takes_clips_for_multi_frame_models(clip_checkpoints):
    """mmexp.load(CKPT).restore(clip): a window [T, C, H, W] (or a batch of them) gives the model's output, tiled
    like images; a wrong window length or an image is refused with both shapes named."""
    import mmexp

    pipe = mmexp.load(clip_checkpoints["vsr_tcn"], device="cpu")
    window = clip(2, 3, 9, 11, seed=4)
    whole = pipe.model.restore(window)
    torch.testing.assert_close(pipe.restore(window[0]), whole[0])
    torch.testing.assert_close(pipe.restore(window), whole)
    torch.testing.assert_close(pipe.restore(window, tile=5, tile_overlap=4), whole, atol=1e-5, rtol=0)
    with pytest.raises(ShapeMismatchError, match=r"clips of 3 frames of 3 channels.*\(5, 3, 9, 11\)"):
        pipe.restore(clip(1, 5, 9, 11)[0])
    with pytest.raises(ShapeMismatchError, match=r"\(3, 9, 11\)"):
        pipe.restore(window[0, 0])
    recurrent = mmexp.load(clip_checkpoints["basicvsr"], device="cpu")
    assert recurrent.restore(window[0]).shape == (3, 3, 36, 44)  # every frame
