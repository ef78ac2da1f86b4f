"""Reads W&B's offline run files (``run-<id>.wandb``: W&B's header, then LevelDB-log framed protobuf
``Record`` messages), so tests can check what a run logged without a W&B server."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, buf, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a record W&B's writer has not finished (the file is read while written)
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            buf = chunk
        elif kind == _MIDDLE:
            buf += chunk
        elif kind == _LAST:
            out.append(buf + chunk)
        elif kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
    parsed = []
    for blob in out:
        record = pb.Record()
        record.ParseFromString(blob)
        parsed.append(record)
    return parsed


def run_file(run_dir: Path, timeout: float = 60.0) -> Path:
    """The one ``run-*.wandb`` file under ``run_dir/wandb/offline-run-*``, once it is complete.

    ``wandb.finish`` returns when the run is finished, but the file is written by W&B's separate core
    process, which may still be flushing it: wait (up to ``timeout`` s) for the run's ``exit`` record.
    """
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise AssertionError(f"expected one W&B run under {run_dir}, found {[str(f) for f in files]}")
    deadline = time.monotonic() + timeout
    while _exit_code_so_far(files[0]) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return files[0]


def _exit_code_so_far(path: Path) -> int | None:
    """:func:`exit_code` of a file that may still be being written: a half-written record reads as "not yet"."""
    try:
        return exit_code(path)
    except DecodeError:
        return None


def run_id(path: Path) -> str:
    return next(r.run.run_id for r in records(path) if r.WhichOneof("record_type") == "run")


def summary(path: Path) -> dict:
    """The run summary: the last value of every key written by summary updates."""
    out: dict = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                key = item.key or "/".join(item.nested_key)
                out[key] = json.loads(item.value_json)
    return out


def exit_code(path: Path) -> int | None:
    codes = [r.exit.exit_code for r in records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None
