"""What produced a number: written beside the protocol in ``metrics.json`` and the W&B summary."""

from __future__ import annotations

import functools
import os
import subprocess
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the mmexp checkout this code runs from (``+dirty`` with local changes), or None when
    mmexp is installed from a wheel/sdist rather than run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        top = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=5)
        if top.returncode != 0 or not os.path.isfile(os.path.join(top.stdout.strip(), "pyproject.toml")):
            return None
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(trainer: Any = None, device: torch.device | str | None = None, precision: str | None = None) -> dict:
    """mmexp version and git commit, torch/lightning versions, device and precision."""
    import lightning

    import mmexp

    if trainer is not None:
        device = device or trainer.strategy.root_device
        precision = precision or str(trainer.precision)
    out: dict[str, Any] = {
        "mmexp": mmexp.__version__,
        "git_commit": git_commit() or "not a checkout",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "device": device_name(device),
        "precision": precision or "32-true",
    }
    if trainer is not None:
        out["world_size"] = int(trainer.world_size)
    return out
