"""Prepare the next training batch in a background thread while the current step computes (issue 6).

Sampling (random slices/crops, resizing, augmentation) is NumPy/SciPy work that releases the
GIL for most of its time, so it overlaps the previous step's forward and backward passes. The
draws happen in the same order and from the same random generator as without prefetching; the
generator state *before* the pending draw is kept, so that a checkpoint resumes with exactly the
batch that was prepared but not yet used.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Optional, Tuple, TypeVar

import numpy as np

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Calls ``draw()`` one batch ahead on a worker thread; ``rng`` is the generator ``draw`` uses."""

    def __init__(self, draw: Callable[[], T], rng: np.random.Generator):
        self._draw = draw
        self._rng = rng
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvbm-batches")
        self._pending: Optional[Future] = None

    def _job(self) -> Tuple[dict, T]:
        state = self._rng.bit_generator.state
        return state, self._draw()

    def next(self) -> T:
        """The next batch (drawn now if none is pending); starts drawing the one after it."""
        if self._pending is None:
            self._pending = self._executor.submit(self._job)
        _, batch = self._pending.result()
        self._pending = self._executor.submit(self._job)
        return batch

    def rng_state(self) -> dict:
        """Generator state from which the not-yet-used batch is drawn (what a checkpoint stores)."""
        if self._pending is None:
            return self._rng.bit_generator.state
        return self._pending.result()[0]

    def close(self) -> None:
        """Drop the pending batch and rewind the generator to before it (a phase or run ends)."""
        if self._pending is not None:
            state = self.rng_state()
            self._pending = None
            self._rng.bit_generator.state = state
        self._executor.shutdown(wait=True)
