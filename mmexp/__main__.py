"""``python -m mmexp`` / ``mmexp``: the Hydra entry point (:func:`mmexp.train.main`)."""

from __future__ import annotations

import importlib.util
import sys

#: command-line overrides that need an optional Hydra plugin -> (its module, how to install it)
_PLUGINS = {
    "hparams_search=": ("hydra_plugins.hydra_optuna_sweeper", 'pip install "mmexp[optuna]"', "the Optuna sweeper"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", 'pip install "mmexp[optuna]"',
                             "the Optuna sweeper"),
    "hydra/launcher=submitit": ("hydra_plugins.hydra_submitit_launcher", "pip install hydra-submitit-launcher",
                                "the submitit (SLURM) launcher"),
}


def missing_plugin(args: list[str]) -> str | None:
    """The error message for an override whose Hydra plugin is not installed (Hydra's own message only says
    "Could not find 'hydra/sweeper/optuna'"), or None."""
    for arg in args:
        for prefix, (module, how, what) in _PLUGINS.items():
            if arg.startswith(prefix) and not _importable(module):
                return f"error: `{arg}` needs {what}, which is not installed: {how}"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    message = missing_plugin(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    from mmexp.train import main as hydra_main

    hydra_main()


if __name__ == "__main__":
    main()
