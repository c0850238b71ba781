"""Component tests run torch on MERR1_TEST_THREADS threads (default 1): the tiny models gain
nothing from more, and the CI machine's 2 cores are shared with the distributed tests'
subprocesses (oversubscription makes them many times slower). Set at import, so it holds for
every test of this folder. Run the suite with MERR1_TEST_THREADS=2 (or more) to check that no
float comparison depends on the thread count (reductions split differently over threads)."""

import os

import torch


def _num_threads() -> int:
    value = os.environ.get("MERR1_TEST_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MERR1_TEST_THREADS must be a positive integer, got {value!r}")
    return int(value)


torch.set_num_threads(_num_threads())
