"""Outputs that never destroy what the user has; every writer of the CLI, engine and widgets uses these.

* :func:`check_outputs`: every file a command will write, checked before the first is written:
  never over an input, never two inputs onto one output (or one case name), never over an
  existing file unless the user allowed overwriting.
* :func:`check_writable`: the output folder can be created and written, before minutes of work.
* :func:`run_folder`: a training run's exclusive hold on its output folder (a lock file that the
  OS releases when the process dies), refusing to replace an earlier run's checkpoints.
* :func:`atomic_write`: temp file next to the target, fsync, ``os.replace``: a failed write leaves
  the previous file and no temp file, and names the path that failed.
"""

import glob
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, Optional, Sequence, Tuple

from filelock import FileLock, Timeout

from .errors import CVBMInputError

RUN_FILES = ("last.pt", "model.pt", "best.pt", "pretrained.pt")  # what a training run writes
LOCK_NAME = ".cvbm-train.lock"


def _cannot_write(path: Path, error: OSError, folder: bool = False) -> CVBMInputError:
    """One line naming ``path`` (a ``folder`` or a file) and why, naming a file that stands where a
    folder should be."""
    candidates = [path, *path.parents] if folder else path.parents
    blocker = next((p for p in candidates if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else error.strerror or str(error)
    return CVBMInputError(f"Cannot write {path}: {reason}")


def _file_id(path) -> Optional[Tuple[int, int]]:
    """(device, inode) of an existing file, so that one file matches however its path is spelled."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def refuse_existing(path, overwrite: bool = False) -> None:
    """CVBMInputError when ``path`` exists and overwriting was not allowed."""
    if os.path.lexists(path) and not overwrite:
        raise CVBMInputError(f"{path} already exists; choose another output or allow overwriting "
                             f"(cvbm: --overwrite)")


def check_outputs(plan: Mapping[Path, Sequence[Path]], overwrite: bool = False,
                  case: Optional[Callable[[Path], str]] = None) -> None:
    """Refuse a plan (input file -> the files written for it) that would destroy a file; writes nothing.

    Always refused: an output that is an input (compared as files: ``..``, symlinks and hard links
    are caught), two inputs with one output or one ``case`` name. An existing output: unless
    ``overwrite``.
    """
    inputs = {key: source for source in plan if (key := _file_id(source)) is not None}
    owners = {}
    for source, targets in plan.items():
        claims = [(("case", case(source)), f"share the case name '{case(source)}'")] if case else []
        claims += [(("file", os.path.realpath(target)), f"would both be written to {target}") for target in targets]
        for key, clash in claims:
            other = owners.setdefault(key, source)
            if other != source:
                raise CVBMInputError(f"{other} and {source} {clash}; rename one or process them separately")
        for target in targets:
            replaced = inputs.get(_file_id(target))
            if replaced is not None:
                raise CVBMInputError(f"writing {target} would replace the input {replaced}; choose another "
                                     f"output folder")
            refuse_existing(target, overwrite)


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and create (and drop) a probe file in it; CVBMInputError if that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".cvbm-probe-"):
            pass
    except OSError as error:
        raise _cannot_write(folder, error, folder=True) from error
    return folder


@contextmanager
def run_folder(folder, resume=None, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for one training run: an exclusive, non-blocking lock on a file inside it.

    Refused: a folder another process holds, one that cannot be created or written, and one that
    already holds a run's checkpoints unless ``resume`` is a checkpoint in it (continuing that
    run) or ``overwrite``. The OS releases the lock if the process dies.
    """
    folder = Path(folder)
    lock = FileLock(folder / LOCK_NAME, blocking=False)
    try:
        lock.acquire()  # creates the folder and the lock file: the writability check
    except Timeout:
        raise CVBMInputError(f"{folder} is in use by another cvbm train; wait for it to finish or choose "
                             f"another output folder") from None
    except OSError as error:
        raise _cannot_write(folder, error, folder=True) from error
    try:
        _refuse_earlier_run(folder, resume, overwrite)
        yield folder
    finally:
        lock.release()


def _refuse_earlier_run(folder: Path, resume, overwrite: bool) -> None:
    found = [name for name in RUN_FILES if (folder / name).exists()]
    continuing = resume is not None and _file_id(Path(resume).parent) == _file_id(folder)
    if found and not (continuing or overwrite):
        raise CVBMInputError(f"{folder} already holds a training run ({', '.join(found)}); continue it "
                             f"(cvbm train --resume {folder / 'last.pt'}), replace it (--overwrite) or "
                             f"choose another output folder")


@contextmanager
def atomic_write(path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` once it is completely written and synced to disk.

    It is written as ``.NAME.PID.tmp`` in the same folder. On any failure ``path`` keeps its
    previous content, the temp file is removed and an OSError becomes a CVBMInputError naming
    ``path``. Temp files left by writers that died (killed mid-write) are removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _remove_dead_writers_temps(path)
        _fsync_folder(path.parent)
    except OSError as error:
        raise _cannot_write(path, error) from error


def _remove_dead_writers_temps(path: Path) -> None:
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = temp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            temp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (assumed on Windows, where signal 0 would interrupt it)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no directory handles to sync)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
