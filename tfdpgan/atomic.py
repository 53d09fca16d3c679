"""Outputs that appear atomically: readers see either nothing (or the old version) or the
complete new output, never a half-written one. No TensorFlow import (the phantom uses it)."""
import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterable

__all__ = ["write_text_atomic", "write_bytes_atomic", "write_json_atomic", "staged_dir",
           "remove_leftovers"]


def write_text_atomic(path: str, text: str) -> None:
    """Write a text file (UTF-8) via a temporary sibling and a rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a binary file via a temporary sibling and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_leftovers(folder: str, staged: Iterable[str] = ()) -> list:
    """Remove what a killed writer of this module left in ``folder``: ``.tmp-*`` files of
    write_*_atomic, and the ``.<name>.tmp-*`` / ``.<name>.old-*`` folders of staged_dir for
    each output ``name`` in ``staged`` (only those: another command may be staging its own
    output beside them). Call it only while no other process writes these outputs. Returns
    the names removed."""
    prefixes = tuple(f".{name}.{kind}-" for name in staged for kind in ("tmp", "old"))
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if name.startswith(".tmp-") and os.path.isfile(path):
            os.remove(path)
        elif prefixes and name.startswith(prefixes) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(name)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, obj) -> None:
    """Write JSON atomically; NaN/Inf are refused (numbers stay JSON numbers)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def staged_dir(out_dir: str, overwrite: bool = False):
    """Yield a hidden staging folder beside ``out_dir``. On normal exit it is renamed to
    ``out_dir`` (an existing ``out_dir`` is replaced only if ``overwrite``, else
    FileExistsError); on any error it is removed and ``out_dir`` is left as it was."""
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; outputs are ordinary folders
        yield staging
        _publish(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: str, out_dir: str, overwrite: bool):
    if not os.path.lexists(out_dir):
        os.rename(staging, out_dir)
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (it appeared while being written)")
    parent, name = os.path.split(out_dir)
    trash = tempfile.mkdtemp(dir=parent, prefix=f".{name}.old-")
    old = os.path.join(trash, "old")
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
