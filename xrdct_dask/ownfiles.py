"""Files this program writes beside a user's files, never over them.

Every file is written under a temporary name made for this one write (``.NAME.<hex>.part``,
created exclusively: a file of that name already there is never opened, emptied or removed) and
renamed over ``NAME`` only when whole, and only where ``NAME`` is absent or a file this program
wrote (the caller says how it recognises its own: a PNG's Software text, a JSON key).  A failed
write removes only its own temporary file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def own_tmp_name(path: Path, tag: str = "part") -> Path:
    """``.NAME.<12 hex>.<tag>`` beside ``path``: a name no other write uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{tag}")


@contextlib.contextmanager
def exclusive_tmp(path: Path, tag: str = "part") -> Iterator[tuple[int, Path]]:
    """``with exclusive_tmp(path) as (fd, tmp):`` a new file beside ``path`` created with
    ``O_EXCL`` (never someone else's), open for writing; removed on an exception inside the block
    unless it was renamed away.  The caller renames ``tmp`` into place."""
    for _ in range(8):
        tmp = own_tmp_name(path, tag)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            break
        except FileExistsError:  # a name taken by chance: draw another
            continue
    else:  # pragma: no cover - 8 collisions of 48 random bits
        raise FileExistsError(f"{path}: no free temporary name beside it")
    try:
        yield fd, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def replace_own(path: Path, write: Callable[[object], None], ours: Callable[[Path], bool], what: str = "file") -> bool:
    """Write ``path`` by ``write(binary file object)`` into an exclusive temporary file renamed
    into place, unless ``path`` exists and ``ours(path)`` is false (then nothing is written and
    False returned).  OSError (full disk...) propagates; the temporary file is gone then."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not ours(path):
        return False
    with exclusive_tmp(path) as (fd, tmp):
        with os.fdopen(os.dup(fd), "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    return True


def is_own_json(path: Path, key: str, value: str) -> bool:
    """True when ``path`` is a JSON object whose ``key`` is ``value`` (how a program marks its own)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get(key) == value
