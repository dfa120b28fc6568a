"""The board reading logs that `trainer fit` really wrote: a finished run and a diverged one."""

from __future__ import annotations

import pytest

from tests.test_fit import opts, project  # noqa: F401 - the fixture

from trainer.board.server import make_app
from trainer.fit import fit
from trainer.rails import DivergedError


async def test_board_shows_a_finished_and_a_failed_fit(project, tmp_path, aiohttp_client):
    fit(opts(project("good.prototxt", max_iter=40, prefix="good/run")))
    with pytest.raises(DivergedError) as err:
        fit(opts(project("boom.prototxt", base_lr=1e30, test_interval=0, prefix="boom/run")))
    client = await aiohttp_client(make_app(tmp_path))
    rows = {r["path"]: r for r in (await (await client.get("/api/overview")).json())["runs"]}
    assert set(rows) == {"good/run.log", "boom/run.log"}
    good, boom = rows["good/run.log"], rows["boom/run.log"]
    assert good["state"] == "finished" and good["iteration"] == 40 and 0 <= good["best_accuracy"] <= 1
    assert boom["state"] == "failed" and boom["note"] == str(err.value)
    card = await (await client.get("/api/run", params={"path": "good/run.log"})).json()
    assert card["points"]["test accuracy"] == 3      # tests at 0, 20, 40
    assert card["nets"] == ["good.prototxt.net"]     # named by the log, found from the log's folder up
    assert 'data-series="accuracy" data-n="3"' in card["charts"]["accuracy"]
