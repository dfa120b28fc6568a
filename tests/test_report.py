"""datakit.report: one --report format and one progress-bar policy for every long command."""

from __future__ import annotations

import io
import json

from datakit.report import progress_bar, progress_enabled, write_report


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_write_report_is_indented_json_with_a_final_newline(tmp_path):
    write_report(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "r.json").read_text()
    assert text == json.dumps({"b": 1, "a": [1, 2]}, indent=1) + "\n"
    assert not list(tmp_path.glob(".*.part"))


def test_the_policy_is_the_flag_when_given_else_whether_stderr_is_a_terminal():
    assert progress_enabled(None, _Terminal()) is True
    assert progress_enabled(None, io.StringIO()) is False
    assert progress_enabled(True, io.StringIO()) is True
    assert progress_enabled(False, _Terminal()) is False
    closed = io.StringIO()
    closed.close()
    assert progress_enabled(None, closed) is False


def test_a_shown_bar_draws_and_a_hidden_one_draws_nothing():
    shown, hidden = _Terminal(), io.StringIO()
    with progress_bar(10, None, desc="convert", unit="img", stream=shown) as bar:
        bar.update(10)
    assert "convert" in shown.getvalue() and "10/10" in shown.getvalue()
    with progress_bar(10, None, desc="convert", stream=hidden) as bar:
        bar.update(10)
        bar.n = 5
        bar.refresh()
    assert hidden.getvalue() == ""
