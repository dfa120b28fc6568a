"""`datakit`: the data side of the workflow, one subcommand per stage."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cli.dispatch import run_main

# name -> module defining HELP, add_arguments(parser), run(args)
COMMANDS: dict[str, str] = {
    "assemble": "cli.cmd_assemble",
    "mirror": "cli.cmd_mirror",
    "check-list": "cli.cmd_check_list",
    "describe": "cli.cmd_describe",
    "upgrade": "cli.cmd_upgrade",
    "idx-export": "cli.cmd_idx_export",
    "convert": "cli.cmd_convert",
    "merge": "cli.cmd_merge",
    "mean": "cli.cmd_mean",
    "inspect": "cli.cmd_inspect",
    "fetch-model": "cli.cmd_fetch_model",
    "fetch-mean": "cli.cmd_fetch_mean",
    "split": "cli.cmd_split",
}


def main(argv: Sequence[str] | None = None) -> int:
    # No datakit command multiplies matrices, but NumPy's OpenBLAS starts a thread per core at import
    # that spins for ~0.1 s of CPU, time taken from the decoding workers. Set before NumPy is imported
    # (the commands import it lazily); a value the user set is kept.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return run_main("datakit", "From image URLs to Caffe databases and mean images.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
