"""`trainer`: Caffe's `caffe` tool (train, test, time) and friends."""

from __future__ import annotations

from collections.abc import Sequence

from cli.dispatch import run_main

# name -> module defining HELP, add_arguments(parser), run(args)
COMMANDS: dict[str, str] = {
    "fit": "cli.trainer_cmd_fit",
    "plot": "cli.trainer_cmd_plot",
    "test": "cli.trainer_cmd_test",
    "time": "cli.trainer_cmd_time",
    "classify": "cli.trainer_cmd_classify",
    "export": "cli.trainer_cmd_export",
    "draw": "cli.trainer_cmd_draw",
    "board": "cli.trainer_cmd_board",
    "transfer": "cli.trainer_cmd_transfer",
    "grid": "cli.trainer_cmd_grid",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("trainer", "Train, fine-tune and test Caffe nets on NumPy or CuPy.", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
