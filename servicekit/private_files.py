"""Files and directories no other user may touch: a directory made with O_EXCL semantics, and a secret
written 0600 from its first byte.

Why both are needed: a process that opens or truncates a path another user controls writes where that
user chooses. A directory someone made first in a shared place (or a symlink left there) would have the
instance create and truncate files wherever it points, as root if it runs as root; a secret written with
the default mode and chmod-ed after can be opened by anyone in between, and the open file stays readable.

- `private_dir`: `mkdir(path, 0o700)`, which fails when the path exists. An existing one is taken only when
  it is a real directory of this user's, mode 0700; another user's directory, a symlink, or a directory
  others may enter is refused, with an `UnsafePath` that says which and why. Its parent must be this
  user's and writable by nobody else, or another user could swap the directory for one of theirs.
- `write_private`: the text goes to a temporary file of the same directory, which `mkstemp` opens 0600, and
  is renamed over the path: no moment where it is readable by others, and never half written.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import tempfile
from pathlib import Path

from .errors import UnsafePath


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check(path: Path, exact_mode: int | None, what: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{what} {path} is a symbolic link: refusing to follow it; remove it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePath(
            f"{what} {path} belongs to {_user(st.st_uid)}, not to this user, {_user(os.geteuid())}: "
            "refusing to use it; remove it, or choose another directory"
        )
    mode = stat.S_IMODE(st.st_mode)
    if exact_mode is not None and mode != exact_mode:
        raise UnsafePath(f"{what} {path} has mode {mode:04o}, not {exact_mode:04o}: refusing to use it; remove it")
    if exact_mode is None and mode & 0o022:
        raise UnsafePath(f"{what} {path} is writable by others (mode {mode:04o}): refusing to use it")


def private_dir(path: Path, what: str = "the directory") -> Path:
    """`path` as a directory of this user's, mode 0700: made now, or checked when it exists (see the
    module). The parent is made first when missing. `what` names it in the error."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check(parent, None, f"the parent of {what}")
    with contextlib.suppress(FileExistsError):  # O_EXCL: an existing path is checked below, never reused as is
        os.mkdir(path, 0o700)
    _check(path, 0o700, what)
    return path


def write_private(path: Path, text: str, uid: int | None = None, gid: int | None = None) -> None:
    """Write `text` to `path`, mode 0600 from the start, owned by `uid`:`gid` when given (given to that user
    before the rename, so that the path never names a file of the wrong owner)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            if uid is not None or gid is not None:
                os.fchown(f.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
