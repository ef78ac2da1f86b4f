"""Lightning callbacks: checkpoints, resume state, sample grids, validation metrics and the progress bar."""

from mmexp.callbacks.best_checkpoint import BestCheckpoint
from mmexp.callbacks.checkpoint_io import AtomicCheckpointIO
from mmexp.callbacks.last_checkpoint import LastCheckpoint
from mmexp.callbacks.metrics import ValidationMetrics
from mmexp.callbacks.progress import ProgressBar
from mmexp.callbacks.run_state import RunState, read_run_state
from mmexp.callbacks.samples import SampleGrid

__all__ = [
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "LastCheckpoint",
    "ProgressBar",
    "RunState",
    "SampleGrid",
    "ValidationMetrics",
    "read_run_state",
]
