"""The model x text-encoder table of text-to-image on 32 px shapes (experiments/README.md, issue 8): every
conditional family trained for a short run on the data of ``experiment=t2i_shapes_cpu`` (single objects, the
same 7 held-out colour-shape pairs), then scored by ``task=eval metrics=t2i`` (FID/KID and caption accuracy on
the val split and on the compositional split of unseen pairs).

    python experiments/t2i_table.py OUT                # train + score every cell, one process at a time
    python experiments/t2i_table.py OUT --dry-run      # print the commands only
    python experiments/t2i_table.py OUT --only text_gan/learned diffusion/use

Everything goes through ``python -m mmexp`` (one subprocess per run, so each cell is a command a user can
repeat): the VQ-VAE of the VQ prior (stage 1, the experiment's own ``stages.stage1`` overrides) is trained once
into ``OUT/runs/vqvae_stage1`` and shared by every ``vq_prior`` cell. ``OUT/results.json`` (every number, the
commands, wall times and load averages) and ``OUT/table.md`` are rewritten after each cell, so an interrupted
run keeps what it finished; running the same command again skips the cells already scored (``--redo`` trains
them again). A cell that fails is recorded with the first line of its error, never dropped.

Budgets are per family (``--steps text_gan=2000``), chosen so that a run trains in ~1.5-3 minutes on one CPU
thread. The trainer counts a GAN's D and G steps together (``trainer.max_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the experiment whose data (held-out pairs, single objects, sizes) and VQ-VAE every cell shares
EXPERIMENT = "t2i_shapes_cpu"

#: family -> (model config, default trainer.max_steps, overrides every cell of the family gets)
FAMILIES: dict[str, tuple[str, int, list[str]]] = {
    # label-conditioned: the object's shape; captions are not seen
    "cgan": ("cgan", 1200, []),
    "text_gan": ("text_gan", 1200, []),
    # a prior that cross-attends to the caption as the experiment's does (128-d, 4 blocks); its stage 1 given by
    # --stage1 (the experiment's own 16x16 VQ-VAE) or trained here with the experiment's stage-1 overrides
    "vq_prior": ("vq_prior", 300, ["model.transformer.conditioning=cross_attention",
                                   "model.transformer.dim=128", "model.transformer.depth=4",
                                   "model.conditioner.dim=128", "model.cache_codes=true"]),
    # sampling with 10 DDIM steps (trailing spacing): validation and task=eval use the model's sampler; raw
    # weights: an EMA of decay 0.999 after 60 steps is still ~94% the initial weights (it samples pure noise)
    "diffusion": ("diffusion", 60, ["model.sampler.steps=10", "model.ema_decay=null"]),
}
#: text encoders of the text-conditioned families (clip: no weights offline, its error is the cell's note)
ENCODERS = ["learned", "minilm", "use", "clip"]
#: the VQ-VAE's own budget (the experiment's is kept unless --stage1-steps)
STAGE1 = "vqvae_stage1"
#: per-run training settings: no FID during training (task=eval scores), one validation (the grid) at the end
TRAIN = ["trainer=cpu", "trainer.max_epochs=-1", "trainer.check_val_every_n_epoch=1000",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "callbacks.best_checkpoint=null",
         "metrics=none", "logger=csv"]
#: metric keys of task=eval metrics=t2i (eval/* for val, eval_compositional/* for the unseen pairs)
SPLITS = {"val": "eval", "comp": "eval_compositional"}
NUMBERS = ["fid", "kid_mean", "caption_color", "caption_shape", "caption_all", "label_acc"]


@dataclass
class Cell:
    """One row of the table: a family, an encoder (``label``: the class-conditional GAN) and its commands."""

    family: str
    encoder: str
    steps: int
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.family}/{self.encoder}"

    @property
    def slug(self) -> str:
        return f"{self.family}_{self.encoder}".replace("+", "_")


def experiment_data() -> tuple[list[str], list[str]]:
    """The data overrides of ``experiment=t2i_shapes_cpu`` (as command-line keys) and its stage-1 overrides."""
    from mmexp.stages import compose_stage

    cfg = compose_stage([f"experiment={EXPERIMENT}"])
    ds = cfg.data.dataset
    # double quotes inside: shlex then quotes the whole override once, readable to paste into a shell
    holdout = ",".join(f'"{pair}"' for pair in ds.holdout)
    data = [f"data.dataset.min_shapes={ds.min_shapes}", f"data.dataset.max_shapes={ds.max_shapes}",
            f"data.dataset.num_train={ds.num_train}", f"data.dataset.holdout=[{holdout}]",
            f"data.batch_size={cfg.data.batch_size}", f"data.eval_batch_size={cfg.data.eval_batch_size}",
            f"data.image_size={cfg.data.image_size}", f"seed={cfg.seed}"]
    return data, [str(o) for o in cfg.stages.stage1.overrides]


def grid(families: list[str], encoders: list[str], steps: dict[str, int]) -> list[Cell]:
    """Every (family, encoder) cell: cgan by label, and a text+label row of the text GAN; in the order they run:
    encoder by encoder (every family's first encoder first), so that a run cut short still has every family."""
    cells = []
    for family in families:
        n = steps[family]
        extra = list(FAMILIES[family][2])
        if family == "cgan":
            cells.append(Cell(family, "label", n, ["text_encoder=none", *extra]))
            continue
        cells += [Cell(family, enc, n, [f"text_encoder={enc}", *extra]) for enc in encoders]
        if family == "text_gan" and "learned" in encoders:
            cells.append(Cell(family, "learned+label", n,
                              ["text_encoder=learned", "model.conditioner.num_classes=${data.num_classes}", *extra]))
    rank = {enc: i for i, enc in enumerate(["label", *encoders])}
    return sorted(cells, key=lambda c: rank.get(c.encoder, len(rank)))


def row_order(name: str) -> tuple[int, int, str]:
    """Table rows by family, then encoder, in the order of FAMILIES and ENCODERS."""
    family, encoder = name.split("/", 1)
    families, encoders = list(FAMILIES), ["label", *ENCODERS]
    return (families.index(family) if family in families else len(families),
            encoders.index(encoder) if encoder in encoders else len(encoders), encoder)


def mmexp(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "mmexp", *overrides]


def shown(cmd: list[str]) -> str:
    """A command as a user types it (``python``, not this interpreter's path)."""
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def stage1_command(out: Path, data: list[str], stage1: list[str], steps: int | None) -> list[str]:
    own = [o for o in stage1 if not (steps and o.startswith("trainer.max_steps="))]
    if steps:
        own.append(f"trainer.max_steps={steps}")
    return mmexp(*data, *own, "trainer.enable_progress_bar=false", "logger=csv", f"task_name=t2i_table/{STAGE1}",
                 f"hydra.run.dir={out / 'runs' / STAGE1}")


def stage1_ckpt(out: Path, given: str | None) -> str:
    return given or str(out / "runs" / STAGE1 / "checkpoints" / "last.ckpt")


def train_command(cell: Cell, out: Path, data: list[str], stage1: str) -> list[str]:
    extra = [f"model.stage1.ckpt_path={stage1}"] if cell.family == "vq_prior" else []
    return mmexp(f"model={FAMILIES[cell.family][0]}", *cell.overrides, *data, *TRAIN, *extra,
                 f"trainer.max_steps={cell.steps}", f"task_name=t2i_table/{cell.slug}",
                 f"hydra.run.dir={out / 'runs' / cell.slug}")


def eval_command(cell: Cell, out: Path, samples: int) -> list[str]:
    return mmexp("task=eval", f"ckpt_path={out / 'runs' / cell.slug / 'checkpoints' / 'last.ckpt'}", "metrics=t2i",
                 f"metrics.num_samples={samples}", "trainer=cpu", "trainer.enable_progress_bar=false",
                 f"task_name=t2i_table/{cell.slug}_eval", f"hydra.run.dir={out / 'runs' / (cell.slug + '_eval')}")


def first_error_line(text: str) -> str:
    """The first line of the last exception in a run's output (Hydra prints ``Error ...``/``XError: ...``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)|Error executing job)\b", ln):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run one mmexp command at one thread, its output into ``log``; wall and CPU time (the CPU seconds do not
    grow with the machine's load, the wall time does), load averages and the error if any."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1",
               WANDB_MODE="offline")
    log.parent.mkdir(parents=True, exist_ok=True)
    start, load0 = time.time(), loadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    try:
        with open(log, "w") as f:
            f.write("$ " + shown(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        error = None if rc == 0 else first_error_line(log.read_text(errors="replace"))
    except subprocess.TimeoutExpired:
        rc, error = -1, f"timed out after {timeout:.0f} s"
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"command": shown(cmd), "rc": rc, "wall_s": round(time.time() - start, 1), "cpu_s": round(cpu, 1),
            "load_start": load0,
            "load_end": loadavg(), "log": str(log), "error": error}


def read_eval(path: Path) -> dict[str, float]:
    scores = json.loads(path.read_text())
    return {f"{split}/{k}": scores[f"{prefix}/{k}"] for split, prefix in SPLITS.items() for k in NUMBERS
            if isinstance(scores.get(f"{prefix}/{k}"), (int, float))}


def fmt(x, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def write_table(results: dict) -> str:
    """The markdown table of ``results`` (results.json's layout): one row per cell, failures with their error."""
    head = ("| model | encoder | steps | train wall s | train CPU s | FID val | KID val | colour val | shape val | all val | "
            "colour comp | shape comp | all comp | FID comp | note |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    # cells of the grid that have no record yet (a run still going, or stopped) are rows too, not gaps
    cells = {name: {"note": "not run"} for name in results.get("planned", [])}
    cells.update(results["cells"])
    for name in sorted(cells, key=row_order):
        cell = cells[name]
        s = cell.get("scores") or {}
        note = cell.get("note") or ""
        if cell.get("error"):
            # the error's first sentence (results.json keeps its whole first line)
            error = cell["error"].split(". ", 1)[0]
            note = (note + "; " if note else "") + f"failed ({cell.get('failed_at', 'train')}): {error}"
        if s.get("val/label_acc") is not None:
            note = (note + "; " if note else "") + f"label acc val {fmt(s['val/label_acc'], 2)} / comp " \
                   f"{fmt(s.get('comp/label_acc'), 2)}"
        train = cell.get("train") or {}
        family, encoder = name.split("/", 1)
        rows.append("| " + " | ".join([
            family, encoder, str(cell.get("steps", "")), fmt(train.get("wall_s"), 0), fmt(train.get("cpu_s"), 0),
            fmt(s.get("val/fid"), 1), fmt(s.get("val/kid_mean"), 3),
            fmt(s.get("val/caption_color"), 2), fmt(s.get("val/caption_shape"), 2), fmt(s.get("val/caption_all"), 2),
            fmt(s.get("comp/caption_color"), 2), fmt(s.get("comp/caption_shape"), 2),
            fmt(s.get("comp/caption_all"), 2), fmt(s.get("comp/fid"), 1), note.replace("|", "/")]) + " |")
    lines = [f"Protocol: {results['protocol']}", "", *rows, ""]
    return "\n".join(lines)


def hardware() -> str:
    cpu = "unknown CPU"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, one thread per run (OMP_NUM_THREADS=1), torch {torch.__version__}, " \
           f"Python {platform.python_version()}"


def save(out: Path, results: dict) -> None:
    for name, text in (("results.json", json.dumps(results, indent=2) + "\n"), ("table.md", write_table(results))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for the runs, results.json and table.md")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--encoders", nargs="+", default=ENCODERS)
    ap.add_argument("--only", nargs="+", default=None, help="cells to run, in this order, e.g. text_gan/learned (default: all)")
    ap.add_argument("--steps", nargs="+", default=[], metavar="FAMILY=N", help="trainer.max_steps per family")
    ap.add_argument("--stage1", default=None, help="a VQ-VAE checkpoint for the vq_prior cells (default: train one)")
    ap.add_argument("--stage1-steps", type=int, default=None, help="the VQ-VAE's budget (default: the experiment's)")
    ap.add_argument("--eval-samples", type=int, default=256, help="metrics.num_samples per split of task=eval")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds one mmexp command may run")
    ap.add_argument("--redo", action="store_true", help="train and score again the cells results.json has")
    ap.add_argument("--stop-at", default=None, metavar="HH:MM",
                    help="UTC clock time after which no run goes on: a run still going is stopped (recorded as timed "
                         "out), the cells not started are recorded as not run")
    args = ap.parse_args(argv)

    steps = {f: FAMILIES[f][1] for f in FAMILIES}
    for item in args.steps:
        family, _, n = item.partition("=")
        if family not in FAMILIES or not n.isdigit():
            ap.error(f"--steps {item!r}: want FAMILY=N with FAMILY in {list(FAMILIES)}")
        steps[family] = int(n)
    cells = grid(args.families, args.encoders, steps)
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in cells})
        if unknown:
            ap.error(f"--only {unknown}: not cells of this grid; cells are {[c.name for c in cells]}")
        by_name = {c.name: c for c in cells}
        cells = [by_name[name] for name in dict.fromkeys(args.only)]
    deadline = None
    if args.stop_at:
        try:
            hh, mm = (int(x) for x in args.stop_at.split(":"))
        except ValueError:
            ap.error(f"--stop-at {args.stop_at!r}: want HH:MM (UTC)")
        now = time.gmtime()
        deadline = time.time() + (hh * 60 + mm - now.tm_hour * 60 - now.tm_min) * 60 - now.tm_sec

    def budget() -> float:
        return args.timeout if deadline is None else max(1.0, min(args.timeout, deadline - time.time()))

    out = args.out.resolve()
    data, stage1_overrides = experiment_data()
    ckpt = stage1_ckpt(out, args.stage1)
    need_stage1 = args.stage1 is None and any(c.family == "vq_prior" for c in cells)
    s1 = stage1_command(out, data, stage1_overrides, args.stage1_steps)

    if args.dry_run:
        env = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "
        if need_stage1:
            print(f"# stage 1 (VQ-VAE, shared by the vq_prior cells)\n{env}{shown(s1)}")
        for c in cells:
            print(f"# {c.name}\n{env}{shown(train_command(c, out, data, ckpt))}\n"
                  f"{env}{shown(eval_command(c, out, args.eval_samples))}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    results["protocol"] = (
        f"data=shapes as experiment={EXPERIMENT} (32 px, one object, 7 held-out colour-shape pairs, seed 42); "
        f"task=eval metrics=t2i metrics.num_samples={args.eval_samples} (generated per split; reference 512 real "
        "images; FID/KID on Inception pool3 of 299 px tf1-bilinear resizes); comp = the compositional split "
        f"(unseen pairs); {hardware()}")
    results["planned"] = [c.name for c in cells]
    results["command"] = shlex.join(["python", *(sys.argv if argv is None else ["experiments/t2i_table.py", *argv])])
    stage1_error = None
    if args.stage1 is not None and any(c.family == "vq_prior" for c in cells):
        results["stage1"] = {"given": str(Path(args.stage1).resolve()), "note": "--stage1: not trained here"}
    if need_stage1:
        if (out / "runs" / STAGE1 / "metrics.json").exists() and Path(ckpt).exists() and not args.redo:
            print(f"stage 1: done already ({ckpt})", flush=True)
        elif deadline is not None and time.time() >= deadline:
            stage1_error = f"not run: --stop-at {args.stop_at} UTC reached"
        else:
            print(f"stage 1: {shown(s1)}", flush=True)
            results["stage1"] = run(s1, out / "logs" / f"{STAGE1}.log", budget())
            save(out, results)
            stage1_error = results["stage1"]["error"]
            print(f"stage 1: {results['stage1']['wall_s']} s, {stage1_error or 'ok'}", flush=True)
    for c in cells:
        done = results["cells"].get(c.name)
        if done and not done.get("error") and done.get("scores") and not args.redo:
            print(f"{c.name}: scored already", flush=True)
            continue
        record = {"steps": c.steps, "overrides": c.overrides}
        if deadline is not None and time.time() >= deadline:
            if done:  # an earlier run's failure stays on record
                continue
            record["note"] = f"not run: --stop-at {args.stop_at} UTC reached"
        elif c.family == "vq_prior" and stage1_error:
            record.update(error=f"stage 1 failed: {stage1_error}", failed_at="stage 1")
        else:
            train = run(train_command(c, out, data, ckpt), out / "logs" / f"{c.slug}.train.log", budget())
            record["train"] = train
            if train["error"]:
                record.update(error=train["error"], failed_at="train")
            else:
                record["samples"] = str(out / "runs" / c.slug / "samples")
                ev = run(eval_command(c, out, args.eval_samples), out / "logs" / f"{c.slug}.eval.log", budget())
                record["eval"] = ev
                scores = out / "runs" / c.slug / "eval" / "t2i.json"
                if ev["error"] or not scores.exists():
                    record.update(error=ev["error"] or f"no {scores}", failed_at="eval")
                else:
                    record["scores"] = read_eval(scores)
        results["cells"][c.name] = record
        save(out, results)
        print(f"{c.name}: {record.get('error') or record.get('scores') or record.get('note')}", flush=True)
    print((out / "table.md").read_text() if (out / "table.md").exists() else "no table", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
