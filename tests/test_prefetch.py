"""The batch prefetcher draws the same batches, in the same order, as drawing in the loop (issue 6)."""

import threading

import numpy as np

from napari_cvbm.core.prefetch import Prefetcher


def test_same_batches_as_direct_draws_and_off_the_calling_thread():
    direct_rng = np.random.default_rng(7)
    expected = [direct_rng.random(3) for _ in range(5)]
    rng = np.random.default_rng(7)
    threads = set()

    def draw():
        threads.add(threading.current_thread().name)
        return rng.random(3)

    batches = Prefetcher(draw, rng)
    got = [batches.next() for _ in range(5)]
    batches.close()
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert threads and threading.current_thread().name not in threads


def test_rng_state_and_close_rewind_to_the_unused_batch():
    rng = np.random.default_rng(3)
    batches = Prefetcher(lambda: rng.random(2), rng)
    batches.next()
    state = batches.rng_state()  # a checkpoint taken now resumes with the prepared batch
    prepared = batches.next()
    batches.close()
    resumed = np.random.default_rng()
    resumed.bit_generator.state = state
    np.testing.assert_array_equal(resumed.random(2), prepared)
    # close() dropped the batch prepared after `prepared`: the generator continues from before it
    follow = np.random.default_rng(3)
    for _ in range(2):  # batch 0 and `prepared`
        follow.random(2)
    np.testing.assert_array_equal(rng.random(2), follow.random(2))
