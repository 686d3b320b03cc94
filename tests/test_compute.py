"""memlab.compute: every model call of the app's Lab runs on one thread."""
import threading

import pytest

from memlab import compute


def test_calls_from_many_threads_run_on_one_thread_in_order_and_raise_where_called():
    seen, order = set(), []

    def work(i):
        seen.add(threading.get_ident())
        order.append(i)
        return i * i

    out = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, compute.run(work, i))) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == {i: i * i for i in range(8)} and len(seen) == 1 and sorted(order) == list(range(8))
    assert threading.get_ident() not in seen  # not the caller's thread

    def boom():
        raise ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        compute.run(boom)

    @compute.on_compute_thread
    def outer():  # a decorated function calling another runs it directly (no deadlock)
        return compute.run(lambda: compute.on_thread())
    assert outer() is True and compute.on_thread() is False


def test_a_forked_child_gets_its_own_compute_thread():
    """ZeroGPU forks a worker per GPU call: there the parent's compute thread does not exist."""
    import multiprocessing as mp

    assert compute.run(lambda: 1) == 1  # the parent's thread is running
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(compute.run, (pow, 2, 5)).get(timeout=30) == 32


def test_the_labs_model_calls_run_on_the_compute_thread(server):
    lab = server[1]
    where = []
    gen = lab.generator
    orig = gen.generate
    gen.generate = lambda *a, **k: (where.append(compute.on_thread()), orig(*a, **k))[1]
    try:
        out = [threading.Thread(target=lambda: lab.generate_chunk("a cat", [0], "none", lab.settings(2, 5.0)))
               for _ in range(2)]
        [t.start() for t in out]
        [t.join() for t in out]
    finally:
        gen.generate = orig
    assert where == [True, True]
