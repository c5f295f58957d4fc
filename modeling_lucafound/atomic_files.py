"""Atomic file output: write beside the destination, then rename, so a crash never leaves a half-written file."""

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path, suffix=".tmp"):
    """Yield a temporary path in `path`'s folder; on success it replaces `path`, on any error it is removed.

    `suffix` lets writers that choose their format by extension (NIfTI, NumPy, matplotlib) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_bytes_atomically(path, data):
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomically(path, text):
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomically(path, payload, **json_options):
    json_options.setdefault("indent", 2)
    return write_text_atomically(path, json.dumps(payload, **json_options) + "\n")


__all__ = ["atomic_output", "write_bytes_atomically", "write_text_atomically", "write_json_atomically"]
