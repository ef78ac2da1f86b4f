"""experiments/t2i_table.py: every cell of the model x encoder grid gets a command that composes into the run the
table claims (family, encoder, budget, the experiment's held-out pairs, the shared stage 1), and the table writer
puts each number and each failure in its place."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import REPO

CONF = REPO / "mmexp" / "conf"

spec = importlib.util.spec_from_file_location("t2i_table", REPO / "experiments" / "t2i_table.py")
t2i_table = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = t2i_table  # dataclasses look their module up there
spec.loader.exec_module(t2i_table)


def dry_run_commands(capsys, out: Path, *extra: str) -> dict[str, list[list[str]]]:
    """``--dry-run``'s output: cell name (or "stage 1") -> its commands, each as argv after ``python -m mmexp``."""
    assert t2i_table.main([str(out), "--dry-run", *extra]) == 0
    commands: dict[str, list[list[str]]] = {}
    name = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("# "):
            name = "stage 1" if line.startswith("# stage 1") else line[2:]
            commands[name] = []
        else:
            argv = shlex.split(line)
            assert argv[:5] == ["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "python", "-m", "mmexp"], line
            commands[name].append(argv[5:])
    return commands


def composed(tmp_path: Path, argv: list[str]):
    """The config of ``python -m mmexp ARGV`` (composed in the Hydra context the test opened: one context for
    all ~30 commands keeps the test fast)."""
    # hydra.run.dir is Hydra's own (not composable without the Hydra config); it is checked as a string
    return compose(config_name="train", overrides=[a for a in argv if not a.startswith("hydra.")])


@pytest.fixture
def hydra_context():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_dry_run_lists_every_cell_and_each_command_composes(tmp_path, capsys, hydra_context):
    out = tmp_path / "table"
    commands = dry_run_commands(capsys, out, "--steps", "diffusion=7")
    expected = {"cgan/label", "text_gan/learned+label"} | {
        f"{family}/{enc}" for family in ("text_gan", "vq_prior", "diffusion") for enc in t2i_table.ENCODERS}
    assert set(commands) == expected | {"stage 1"}
    # they run encoder by encoder, so that a run cut short has every family: the first four are one per family
    assert [name.split("/")[0] for name in list(commands)[1:5]] == ["cgan", "text_gan", "vq_prior", "diffusion"]
    experiment = composed(tmp_path, ["experiment=t2i_shapes_cpu"])
    stage1_ckpt = str(out / "runs" / "vqvae_stage1" / "checkpoints" / "last.ckpt")

    (stage1,) = commands.pop("stage 1")
    cfg = composed(tmp_path, stage1)
    # the experiment's own VQ-VAE (its stages.stage1 overrides, budget included)
    own = dict(o.split("=", 1) for o in experiment.stages.stage1.overrides)
    assert cfg.model._target_.endswith("VQVAE") and cfg.trainer.max_steps == int(own["trainer.max_steps"])
    assert cfg.model.quantizer.num_codes == int(own["model.quantizer.num_codes"])
    assert list(cfg.data.dataset.holdout) == list(experiment.data.dataset.holdout)
    assert f"hydra.run.dir={out / 'runs' / 'vqvae_stage1'}" in stage1

    targets = {"cgan": "ConditionalGAN", "text_gan": "ConditionalGAN", "vq_prior": "VQPrior",
               "diffusion": "ConditionalDiffusion"}
    for name, (train, evaluate) in commands.items():
        family, encoder = name.split("/")
        cfg = composed(tmp_path, train)
        assert cfg.model._target_.endswith(targets[family]), name
        # the data every cell shares is the experiment's: its held-out pairs, single objects, batch size
        assert list(cfg.data.dataset.holdout) == list(experiment.data.dataset.holdout), name
        assert (cfg.data.dataset.max_shapes, cfg.data.batch_size) == (1, experiment.data.batch_size), name
        assert cfg.trainer.max_steps == {"diffusion": 7}.get(family, t2i_table.FAMILIES[family][1]), name
        text = OmegaConf.select(cfg, "model.conditioner.text_encoder._target_")
        if family == "cgan":
            assert text is None and cfg.model.conditioner.num_classes == 4
        else:
            chosen = OmegaConf.load(CONF / "text_encoder" / f"{encoder.split('+')[0]}.yaml")
            assert text == chosen._target_, name
            OmegaConf.to_container(cfg.model, resolve=True)  # the interpolations resolve
            assert cfg.model.conditioner.num_classes == (4 if encoder.endswith("+label") else None), name
        if family == "vq_prior":
            assert cfg.model.stage1.ckpt_path == stage1_ckpt
        if family == "diffusion":  # a short run samples from its raw weights, with few DDIM steps
            assert cfg.model.ema_decay is None and cfg.model.sampler.steps == 10
        run_dir = out / "runs" / name.replace("/", "_").replace("+", "_")
        assert f"hydra.run.dir={run_dir}" in train
        # the eval commands differ only in their checkpoint and run directory: one is composed
        assert f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" in evaluate, name
        assert f"hydra.run.dir={run_dir}_eval" in evaluate, name
        assert [a for a in evaluate if not a.startswith(("ckpt_path=", "hydra.", "task_name="))] == \
            [a for a in commands["diffusion/use"][1] if not a.startswith(("ckpt_path=", "hydra.", "task_name="))]
    cfg = composed(tmp_path, commands["diffusion/use"][1])
    assert cfg.task == "eval" and cfg.metrics.name == "t2i" and cfg.metrics.num_samples == 256
    assert list(cfg.metrics.splits) == ["val", "compositional"]


def test_given_stage1_is_used_and_not_trained(tmp_path, capsys, hydra_context):
    commands = dry_run_commands(capsys, tmp_path, "--stage1", "/x/s1.ckpt", "--only", "vq_prior/use")
    assert list(commands) == ["vq_prior/use"]
    assert "model.stage1.ckpt_path=/x/s1.ckpt" in commands["vq_prior/use"][0]
    commands = dry_run_commands(capsys, tmp_path, "--only", "vq_prior/use", "--stage1-steps", "5")
    assert list(commands) == ["stage 1", "vq_prior/use"]
    assert composed(tmp_path, commands["stage 1"][0]).trainer.max_steps == 5
    # --only runs its cells in its own order
    commands = dry_run_commands(capsys, tmp_path, "--stage1", "/x/s1.ckpt", "--only", "diffusion/use", "cgan/label")
    assert list(commands) == ["diffusion/use", "cgan/label"]


def test_table_rows_and_failures():
    results = {"protocol": "P", "planned": ["vq_prior/use", "cgan/label"], "cells": {
        "text_gan/learned": {"steps": 2000, "train": {"wall_s": 101.4, "cpu_s": 80.6}, "scores": {
            "val/fid": 123.456, "val/kid_mean": 0.1234, "val/caption_color": 0.5, "val/caption_shape": 0.25,
            "val/caption_all": 0.0625, "comp/caption_color": 0.125, "comp/caption_shape": 1.0,
            "comp/caption_all": 0.0, "comp/fid": 200.04}},
        "cgan/label": {"steps": 10, "train": {"wall_s": 5.0, "cpu_s": 4.4}, "scores": {"val/label_acc": 0.875,
                                                                                    "comp/label_acc": 0.5}},
        "diffusion/clip": {"steps": 80, "train": {"wall_s": 9.6, "cpu_s": 9.0}, "failed_at": "train",
                           "error": "WeightsNotFoundError: put a | b here. Or else use x"}}}
    lines = t2i_table.write_table(results).splitlines()
    assert lines[0] == "Protocol: P"
    assert lines[2].count("|") == lines[3].count("|") == 16
    # rows by family (cgan, text_gan, vq_prior, diffusion), whatever order the cells ran in
    assert lines[4] == "| cgan | label | 10 | 5 | 4 | – | – | – | – | – | – | – | – | – | label acc val 0.88 / comp 0.50 |"
    assert lines[5] == ("| text_gan | learned | 2000 | 101 | 81 | 123.5 | 0.123 | 0.50 | 0.25 | 0.06 | 0.12 | 1.00 | 0.00 | "
                        "200.0 |  |")
    # planned, never run: a row that says so
    assert lines[6] == "| vq_prior | use |  | – | – | – | – | – | – | – | – | – | – | – | not run |"
    assert lines[7] == ("| diffusion | clip | 80 | 10 | 9 | – | – | – | – | – | – | – | – | – | failed (train): "
                        "WeightsNotFoundError: put a / b here |")


def test_first_error_line_is_the_exception_not_the_hint():
    log = ("step 1\nTraceback (most recent call last):\n  File x\nmmexp.errors.WeightsNotFoundError: CLIP weights "
           "not found at /c/w.safetensors\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack "
           "trace.\n")
    assert t2i_table.first_error_line(log) == "mmexp.errors.WeightsNotFoundError: CLIP weights not found at /c/w.safetensors"
    assert t2i_table.first_error_line("a\nlast words\n") == "last words"


def test_read_eval_maps_splits(tmp_path):
    path = tmp_path / "t2i.json"
    path.write_text('{"eval/fid": 3.0, "eval_compositional/caption_shape": 0.5, "eval/label_acc": 1.0, '
                    '"protocol/name": "t2i"}')
    assert t2i_table.read_eval(path) == {"val/fid": 3.0, "comp/caption_shape": 0.5, "val/label_acc": 1.0}


def test_stop_at_records_every_cell_it_does_not_run(tmp_path, hydra_context):
    # 00:00 UTC has passed: nothing trains (no stage 1 either), and every cell still gets its row; a failure an
    # earlier run recorded stays
    failed = {"steps": 1, "error": "ValueError: bad", "failed_at": "train"}
    (tmp_path / "results.json").write_text(json.dumps({"cells": {"text_gan/use": failed}}))
    only = ["vq_prior/use", "cgan/label", "text_gan/use"]
    assert t2i_table.main([str(tmp_path), "--stop-at", "00:00", "--only", *only]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert "stage1" not in results and not (tmp_path / "runs").exists()
    assert results["cells"]["text_gan/use"] == failed
    assert {name: results["cells"][name]["note"] for name in only[:2]} == {
        "vq_prior/use": "not run: --stop-at 00:00 UTC reached", "cgan/label": "not run: --stop-at 00:00 UTC reached"}
    rows = (tmp_path / "table.md").read_text().splitlines()[4:7]
    assert [r.split(" | ")[:2] for r in rows] == [["| cgan", "label"], ["| text_gan", "use"], ["| vq_prior", "use"]]
    assert rows[1].endswith("| failed (train): ValueError: bad |")
    assert rows[0].endswith("| not run: --stop-at 00:00 UTC reached |")
    assert rows[2].endswith("| not run: --stop-at 00:00 UTC reached |")


def test_given_stage1_is_recorded_in_place_of_an_earlier_one(tmp_path, hydra_context):
    # results.json says which stage 1 its vq_prior rows were measured on: a given file replaces the record of a
    # stage 1 an earlier run trained (the rows rerun on it would otherwise be credited to the old one)
    (tmp_path / "results.json").write_text(json.dumps({"cells": {}, "stage1": {"command": "python -m mmexp ..."}}))
    assert t2i_table.main([str(tmp_path), "--stop-at", "00:00", "--only", "vq_prior/use", "--stage1",
                           str(tmp_path / "s1.ckpt")]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stage1"] == {"given": str(tmp_path / "s1.ckpt"), "note": "--stage1: not trained here"}
    # cells of other families need no stage 1: its record stays as it was
    (tmp_path / "results.json").write_text(json.dumps({"cells": {}, "stage1": {"command": "x"}}))
    assert t2i_table.main([str(tmp_path), "--stop-at", "00:00", "--only", "cgan/label", "--stage1", "s1.ckpt"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["stage1"] == {"command": "x"}
