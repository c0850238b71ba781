"""Placeholder: the `tune` wrapper that registers merr1's recipes is being written (issue 2)."""

import sys


def main() -> None:
    from torchtune._cli.tune import main as tune_main

    sys.exit(tune_main())
