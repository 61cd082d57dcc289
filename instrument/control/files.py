"""Where commands that arrive over OSC, MIDI or the console may touch the disk.

Nothing a sender types chooses a path outside folders the performer named when starting:

- :class:`OutputFolder`: snapshots (and recordings started from a control) are written into
  one folder (``paik play --out-dir``) under plain file names (:func:`file_name`: no folder
  part, no leading dot), never over an existing file (``shot.png``, then ``shot_2.png`` ...),
  through a hidden temporary file in that folder that is removed whatever goes wrong.
- :class:`LoadRoots`: ``load PATH`` opens only bundles whose real path (symlinks resolved)
  lies under one of the folders given with ``--load-from`` (default: the folder holding the
  bundle ``paik play`` opened). A relative PATH is looked up under each folder in turn.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from pathlib import Path

from paik.errors import PaikError

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def file_name(value, suffix: str) -> str:
    """A name for a file in the output folder: letters, digits, '-', '_', '.', nothing that
    could name another folder; ``suffix`` (".png") is added when missing."""
    name = "" if value is None else str(value).strip()
    if not FILE_NAME.match(name) or ".." in name:
        raise PaikError(f"file name {name!r}: use a plain name of letters, digits, '-', '_' or '.' "
                        f"(no folders; the file goes into the output folder, see --out-dir)")
    if not name.lower().endswith(suffix):
        if "." in name:
            raise PaikError(f"file name {name!r}: this writes {suffix} files (name it like shot{suffix})")
        name += suffix
    return name


def stamped(prefix: str, suffix: str) -> str:
    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S") + suffix


def numbered(path: Path, n: int) -> Path:
    """The n-th file of one name: FILE, then FILE_2, FILE_3 ..."""
    return path if n <= 1 else path.with_name(f"{path.stem}_{n}{path.suffix}")


def reserve(path: Path, limit: int = 10_000) -> Path:
    """Create an empty file at ``path`` or, when that name is taken (a file, a folder, a
    symlink even dangling), at the next free ``_N`` name; returns the name created. Creating
    with O_EXCL is what makes "never overwrite" hold when two writers race."""
    for n in range(1, limit + 1):
        p = numbered(path, n)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            continue
        except OSError as e:
            raise PaikError(f"cannot write {p.name} into {p.parent}: {e.strerror}") from None
        os.close(fd)
        return p
    raise PaikError(f"{limit} files named like {path.name} already exist in {path.parent}; pick another name")


class OutputFolder:
    """The one folder snapshots (and recordings started from a control) are written into."""

    def __init__(self, directory):
        self.dir = Path(directory)

    def check(self) -> None:
        """Make the folder (it was named on the command line) and refuse one that cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".paik-check-", dir=self.dir)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise PaikError(f"--out-dir {self.dir}: cannot write there ({e.strerror}); name a folder you can "
                            "write to") from None

    def path_for(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, write_to) -> Path:
        """Write a new file ``name`` (or ``name_N``) in the folder: ``write_to(path)`` fills a
        hidden temporary file, which then takes the first free name. Returns the final path."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.dir)
        except OSError as e:
            raise PaikError(f"cannot write {name} into {self.dir}: {e.strerror}") from None
        os.close(fd)
        try:
            write_to(tmp)
            return self._publish(Path(tmp), self.dir / name)
        except OSError as e:
            raise PaikError(f"cannot write {name} into {self.dir}: {e.strerror or e}") from None
        finally:
            try:
                os.unlink(tmp)  # published files are a second link to it, or it was renamed away
            except FileNotFoundError:
                pass
            except OSError:
                pass

    @staticmethod
    def _publish(tmp: Path, path: Path) -> Path:
        for n in range(1, 10_001):
            p = numbered(path, n)
            try:
                os.link(tmp, p)  # fails if the name exists: no overwrite, even in a race
                return p
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(p):  # a file system without hard links (FAT on a USB stick)
                    continue
                os.rename(tmp, p)
                return p
        raise PaikError(f"10000 files named like {path.name} already exist in {path.parent}; pick another name")


class LoadRoots:
    """The folders ``load`` may open bundles from."""

    def __init__(self, folders):
        self.folders = [Path(os.path.realpath(f)) for f in folders]

    def resolve(self, text) -> Path:
        """The bundle folder ``text`` names, if it lies under a root; PaikError otherwise."""
        name = "" if text is None else str(text).strip()
        if not name or "\x00" in name:
            raise PaikError("load needs a bundle folder")
        given = Path(os.path.expanduser(name))
        candidates = [given] if given.is_absolute() else [f / given for f in self.folders]
        inside = [r for r in (Path(os.path.realpath(c)) for c in candidates)
                  if any(r == f or f in r.parents for f in self.folders)]
        if not inside:
            where = ", ".join(str(f) for f in self.folders)
            raise PaikError(f"load {name}: bundles are opened only from {where} (start paik play with "
                            "--load-from FOLDER to allow another)")
        return next((r for r in inside if r.exists()), inside[0])
