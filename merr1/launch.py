"""``python -m merr1.launch``: torchrun whose exit code tells a requeue script that a run was preempted.

After a preemption save a recipe exits with 143 (SIGTERM) or 130 (SIGINT), 128 + the signal
number (``merr1.components.checkpointing.EXIT_CODE_SIGTERM`` / ``EXIT_CODE_SIGINT``). torchrun
itself exits 1 whenever it was signalled or a worker exited non-zero, so a SLURM script cannot tell
a preemption from a crash by torchrun's code. This wrapper (same arguments as torchrun) and merr1's
``tune`` command (``tune_cli_ext``) translate:

- torchrun got SIGTERM/SIGINT itself (``SignalException``; it forwards the signal to its workers
  and waits ``--shutdown_timeout`` for their preemption save) -> 128 + that signal;
- every failed worker exited with the same preemption code (143 or 130, or was killed by
  SIGTERM/SIGINT) -> that code;
- anything else: torchrun's own behaviour (its error report, exit 1).

Usage: ``python -m merr1.launch --nnodes 1 --nproc_per_node 8 recipes/sft_distributed.py --config ...``
"""

from __future__ import annotations

import signal
import sys

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def launcher_exit_code(error: BaseException) -> int | None:
    """The preemption exit code for an exception torchrun raised, or None if it is not one.

    Args:
        error: what ``torch.distributed.run.main`` raised.

    Returns:
        128 + signal number for a preemption (see the module docstring), else None.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(error, SignalException) and error.sigval in PREEMPTION_SIGNALS:
        return 128 + int(error.sigval)
    if isinstance(error, ChildFailedError) and error.failures:
        codes = set()
        for failure in error.failures.values():
            code = failure.exitcode
            if code < 0 and -code in PREEMPTION_SIGNALS:  # killed by the signal (before the handler was installed)
                code = 128 - code
            codes.add(code)
        if len(codes) == 1 and (code := codes.pop()) in {128 + int(s) for s in PREEMPTION_SIGNALS}:
            return code
    return None


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; return 0, or the preemption exit code (other errors propagate)."""
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(argv)
    except BaseException as error:
        code = launcher_exit_code(error)
        if code is None:
            raise
        print(f"merr1.launch: the run was stopped by a signal after its preemption save; exit code {code}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
