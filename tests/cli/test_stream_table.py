"""`list` as a table streams: rows are printed as they come, never all held at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ktrdr_collect.cli.tables import SAMPLE_ROWS, print_stream_table


def rows(n: int, then_fail: bool = False) -> Iterator[list[str]]:
    for i in range(n):
        yield [f"id{i}", "completed", str(i), f"name {i}"]
    if then_fail:
        raise RuntimeError("the source was consumed further than the rows already printed")


def test_rows_are_printed_before_the_source_is_exhausted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError):
        print_stream_table(["ID", "STATUS", "N", "NAME"], rows(SAMPLE_ROWS + 500, then_fail=True), right=("N",))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + SAMPLE_ROWS + 500  # header + every row pulled so far, written as it came


def test_columns_are_sized_by_the_first_rows_and_later_long_cells_are_cut(capsys: pytest.CaptureFixture[str]) -> None:
    data = [["a", "x", "1", "first"], ["bb", "yy", "22", "second"]] + [["c", "z", "3", "n"]] * SAMPLE_ROWS
    data.append(["a-very-long-id", "completed-ish", "123456", "a long name is never cut"])
    print_stream_table(["ID", "STATUS", "N", "NAME"], iter(data), right=("N",))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ID  STATUS   N  NAME"
    assert lines[1] == "a   x        1  first" and lines[2] == "bb  yy      22  second"
    assert lines[-1] == "a…  compl…  1…  a long name is never cut"


def test_control_characters_never_reach_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    print_stream_table(["ID", "NAME"], iter([["j1", "evil\x1b]52;c;aGk=\x07name"]]))
    assert "\x1b" not in capsys.readouterr().out


def test_nothing_to_list_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    print_stream_table(["ID"], iter([]), empty="No jobs.")
    assert capsys.readouterr().out == "No jobs.\n"
