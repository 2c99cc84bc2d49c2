"""Progress bars redraw on a terminal and write plain, occasional lines anywhere else."""

from __future__ import annotations

import io
import time

from scalelab.runtime.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_bar_writes_whole_lines_and_no_redraws():
    log = io.StringIO()
    with progress_bar(file=log, total=1000, desc="run", unit="step") as bar:
        for _ in range(1000):
            bar.update(1)
        bar.write("a message between updates", file=log)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # The first state, then the close: 1000 updates within the interval print nothing in between.
    assert len(lines) == 3 and lines[0].startswith("run:   0%") and lines[-1].startswith("run: 100%")
    assert "a message between updates" in lines


def test_off_a_terminal_lines_come_at_the_interval():
    log = io.StringIO()
    with progress_bar(file=log, total=5, desc="run", log_interval_s=0) as bar:
        for _ in range(5):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines[:6]] == [f"run: {p:3d}%" for p in (0, 20, 40, 60, 80, 100)]


def test_on_a_terminal_the_bar_redraws_in_place():
    screen = Terminal()
    with progress_bar(file=screen, total=3, desc="run", mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert screen.getvalue().count("\r") >= 3


def test_off_a_terminal_a_nested_bar_writes_no_cursor_codes():
    log = io.StringIO()
    with progress_bar(file=log, total=2, desc="sweep") as outer:
        with progress_bar(file=log, total=3, desc="run", position=1) as inner:
            inner.update(3)
        outer.update(2)
    text = log.getvalue()
    assert "\x1b" not in text and all(line.strip() for line in text.splitlines())
    assert any(line.startswith("run: 100%") for line in text.splitlines())


def test_off_a_terminal_closing_does_not_repeat_the_last_line():
    log = io.StringIO()
    with progress_bar(file=log, total=2, desc="sweep", bar_format="{desc} {percentage:3.0f}% {n}/{total}") as bar:
        bar.update(2)
        bar.refresh()  # what a sweep does after each run, before the close draws the same state
    assert log.getvalue().splitlines() == ["sweep   0% 0/2", "sweep 100% 2/2"]


def test_off_a_terminal_closing_a_moment_later_does_not_repeat_the_last_line_at_another_rate():
    log = io.StringIO()
    with progress_bar(file=log, total=5, desc="run", unit="step") as bar:
        bar.update(5)
        bar.set_postfix(loss=1.5)  # what training does after its last step: a redraw at 100%
        time.sleep(0.05)  # the close comes later, so its rate differs
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0] for line in lines] == ["run:   0%", "run: 100%"], lines
    assert "loss=1.5" in lines[-1]
