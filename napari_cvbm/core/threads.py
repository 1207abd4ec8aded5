"""How many CPU threads a training (or a prediction) uses: one policy for ``cvbm train`` and
``cvbm predict``, the napari worker and ``torchrun`` ranks.

PyTorch's default, one thread per core, is the fastest on an idle machine and collapses as soon as
another process wants a core: the threads of a parallel region wait for each other, so one thread
the system deschedules stalls all of them. Fewer threads than free cores costs at most the cores
left idle. ``benchmarks/threads.py`` measures both (docs/PERFORMANCE.md, "Threads under load"), and
the policy follows from them: train on the cores nobody else is using, and look again while training.

1. An explicit choice wins: ``--threads N``, else ``OMP_NUM_THREADS``. ``torchrun`` sets
   ``OMP_NUM_THREADS=1`` itself when it is unset, so under torchrun only another value counts as
   the user's (``--threads 1`` asks for one thread there).
2. The cores this process may use (its CPU affinity, capped by a cgroup CPU quota), divided among
   the ranks torchrun started on this machine (``LOCAL_WORLD_SIZE``).
3. Minus the cores other processes keep busy (on Linux from ``/proc/stat``, less this process's own
   CPU time; elsewhere the one-minute load average; none where neither exists). Not under torchrun,
   whose ranks would count each other.
4. Minus one in napari (``background=True``): the viewer renders in the same process.
5. Never below 1.

``torch.set_num_threads`` changes the count for the threads that start parallel work afterwards
and for the calling thread, not for a thread that already did parallel work: apply the count in the
thread that trains (``adapt_threads`` does, as it runs in the thread that iterates it).
"""

import math
import os
import time
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, TypeVar

import torch

from .errors import CVBMInputError

ENV = "OMP_NUM_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.25  # how long the first decision watches the other processes
CHECK_EVERY_S = 5.0  # how often a training run looks again

T = TypeVar("T")


def _positive_int(text) -> Optional[int]:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def local_world_size() -> int:
    """Processes torchrun started on this machine; 1 outside torchrun."""
    return _positive_int(os.environ.get("LOCAL_WORLD_SIZE", "")) or 1


def explicit_threads(threads: Optional[int] = None) -> Optional[int]:
    """The count the user chose (``threads``, from ``--threads``, else ``OMP_NUM_THREADS``); None if none."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CVBMInputError(f"--threads must be a whole number of at least 1, not {threads!r}")
        return threads
    value = _positive_int(os.environ.get(ENV, "").split(",")[0])  # OpenMP also takes a list per level
    if value == 1 and local_world_size() > 1:
        return None  # torchrun's own default, not the user's
    return value


def _cgroup_cores(path: Path = CGROUP_CPU_MAX) -> Optional[int]:
    try:
        quota, period = path.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup v2 file, or "max": no quota
        return None


def _affinity() -> Optional[set]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS or Windows
        return None


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    cpus = _affinity()
    cores = len(cpus) if cpus else os.cpu_count() or 1
    quota = _cgroup_cores(cpu_max)
    return max(1, min(cores, quota) if quota else cores)


class CpuClock(NamedTuple):
    """A reading of the wall clock, this process's CPU time and the busy time of its CPUs."""

    wall: float
    own: float
    busy: float

    @classmethod
    def now(cls, stat: Path = PROC_STAT) -> Optional["CpuClock"]:
        """None where the system does not say how busy each CPU is (no ``/proc/stat``)."""
        try:
            lines = stat.read_text().splitlines()
        except OSError:
            return None
        cpus, ticks = _affinity(), 0
        for line in lines:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                values = [int(f) for f in fields[:8]]
                user, nice, system, _idle, _iowait, irq, softirq, steal = values + [0] * (8 - len(values))
                ticks += user + nice + system + irq + softirq + steal  # steal: taken by the hypervisor
        return cls(time.monotonic(), time.process_time(), ticks / os.sysconf("SC_CLK_TCK"))

    def others_since(self, earlier: "CpuClock") -> float:
        """Cores kept busy by other processes between ``earlier`` and this reading."""
        wall = self.wall - earlier.wall
        if wall <= 0:
            return 0.0
        return max(0.0, (self.busy - earlier.busy) - (self.own - earlier.own)) / wall


def busy_cores(window: float = SAMPLE_S) -> float:
    """Cores other processes keep busy now: watched for ``window`` seconds on Linux, else the
    one-minute load average, else 0."""
    start = CpuClock.now()
    if start is None:
        try:
            return max(0.0, os.getloadavg()[0])
        except (AttributeError, OSError):  # Windows
            return 0.0
    time.sleep(window)
    return CpuClock.now().others_since(start)


def training_threads(background: bool, threads: Optional[int] = None, busy: Optional[float] = None) -> int:
    """The CPU threads to train (or predict) with, by the policy above. ``background``: in the napari
    worker (one core stays with the viewer). ``threads``: the user's ``--threads``. ``busy``: the
    cores other processes use, when already measured (else measured now, for ``SAMPLE_S``)."""
    chosen = explicit_threads(threads)
    if chosen is not None:
        return chosen
    ranks = local_world_size()
    if ranks > 1:
        busy = 0.0  # the ranks of one job, started together, would count each other as load
    elif busy is None:
        busy = busy_cores()
    return max(1, usable_cores() // ranks - math.floor(busy + 0.5) - int(background))


def _apply(n: int) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # possible only once, before any inter-op work: that pool stays as it is
        pass


def use_training_threads(background: bool, threads: Optional[int] = None) -> int:
    """Decide with :func:`training_threads` and apply the count in the calling thread; returns it."""
    n = training_threads(background, threads)
    _apply(n)
    return n


def adapt_threads(events: Iterable[T], background: bool, threads: Optional[int] = None,
                  every_s: float = CHECK_EVERY_S, current: Optional[int] = None) -> Iterator[T]:
    """``events`` (a ``TrainingRun.events()``) with the policy applied in the thread that iterates
    them: the count is chosen before the first step (unless ``current``, a count this thread already
    applied with :func:`use_training_threads`), then chosen again every ``every_s`` seconds from what
    other processes used meanwhile. An explicit choice, torchrun and systems without ``/proc/stat``
    keep the first count. Closing this generator closes ``events``; the previous count is restored
    when the run ends or is closed."""
    previous = torch.get_num_threads()
    n = use_training_threads(background, threads) if current is None else current
    fixed = explicit_threads(threads) is not None or local_world_size() > 1
    clock = None if fixed else CpuClock.now()
    iterator = iter(events)
    try:
        for event in iterator:
            yield event
            if clock is not None and time.monotonic() - clock.wall >= every_s:
                now = CpuClock.now()
                n_now = training_threads(background, busy=now.others_since(clock))
                clock = now
                if n_now != n:
                    torch.set_num_threads(n_now)
                    n = n_now
    finally:  # also when the consumer stops early (Cancel): the run stops its own work too
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        torch.set_num_threads(previous)
