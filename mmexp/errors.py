"""Errors that mmexp raises for bad input, each with a message a user can act on."""


class MMExpError(Exception):
    """Base class of mmexp's own errors."""


class ConfigError(MMExpError, ValueError):
    """A configuration that cannot work (unknown option, incompatible sizes...)."""


class ShapeMismatchError(ConfigError):
    """Data and model disagree on image size or channel count; the message names both."""


class MissingBatchKeyError(MMExpError, KeyError):
    """A model needs a batch key (e.g. ``caption``) that the dataset does not provide."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(MMExpError, FileNotFoundError):
    """A dataset's files are missing; the message names the path and how to obtain them."""


class DatasetFormatError(MMExpError, ValueError):
    """A dataset file exists but cannot be parsed (corrupt, truncated, wrong format); names the file."""


class NonFiniteLossError(MMExpError, RuntimeError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class WeightsNotFoundError(MMExpError, FileNotFoundError):
    """Pretrained weights (Inception, LPIPS...) could not be found offline."""


class CheckpointError(MMExpError, ValueError):
    """A checkpoint cannot be used: missing, unreadable, unsafe to unpickle, or from another model; names the file."""


class UnknownWordError(ConfigError):
    """A prompt holds a word the learned text encoder's vocabulary never saw; names the word(s)."""


class MissingDependencyError(MMExpError, ImportError):
    """An optional Python package is not installed; the message names the ``pip install`` that adds it."""


class InputImageError(MMExpError, ValueError):
    """An image given to restore (or its mask or target) cannot be read; names the file and why."""


class CaptionParseError(ConfigError):
    """A caption does not follow the grammar its reader expects (e.g. a shapes caption); names it and the grammar."""
