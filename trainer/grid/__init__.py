"""Experiment grids: the transfer paper's study as folders of nets (make, run, status, summary).

The public contract (dashboards rely on it): ``is_grid(path) -> bool``, ``grid_status(grid_dir) ->
list[NetStatus]`` (fields net, family, n, split, state in done / running / waiting / failed /
skipped, iteration, best_accuracy, score and more), the file layout of trainer.grid.layout, and
the unit of work ``run_net(folder) -> NetOutcome`` that any executor may run.
"""

from trainer.grid.status import STATES, NetStatus, grid_status, is_grid

__all__ = ["STATES", "NetStatus", "grid_status", "is_grid"]
