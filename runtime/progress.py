"""Progress bars: redrawn in place on a terminal, plain periodic lines in a log file or pipe.

tqdm redraws a bar by writing carriage returns, which a file keeps: a sweep's log held 53 bar
lines and 18 KB for 4 runs. Off a terminal every bar here writes one plain line at most every
LOG_INTERVAL_S seconds instead, and one when it closes. A bar nested under another (a sweep's
run under the sweep) moves the cursor up with an escape code; a file gets none of those.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
_CURSOR_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # ANSI cursor moves and clears
# What a redraw changes when only time passed: "|####  |" (its width follows the rest of the line) and
# "[00:01<00:00, 16.03step/s" (elapsed, left, rate).
_TIMING = re.compile(r"\|[^|]*\||\[[0-9:<?]+, *[0-9.?]+ ?[A-Za-z/]*")


class _Lines:
    """A file that turns tqdm's in-place redraws into whole lines (blank redraws, i.e. clears, vanish)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        # The bar's last line without its timing: a redraw that changed nothing else (closing after the last
        # update, a moment later and so at another rate) is dropped.
        self.last = ""

    def write(self, text: str) -> int:
        for piece in _CURSOR_CODES.sub("", text).replace("\r", "\n").split("\n"):
            line = piece.rstrip()
            if line.strip() and _TIMING.sub("[", line) != self.last:
                self.last = _TIMING.sub("[", line)
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(*, file: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S, **options: Any) -> tqdm:
    """A tqdm bar on `file` (default stderr); off a terminal, a line every `log_interval_s` seconds."""
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        return tqdm(file=stream, dynamic_ncols=True, **options)
    # A fixed width keeps lines comparable; maxinterval must not force redraws more often than the interval.
    return tqdm(
        file=_Lines(stream), ncols=100, mininterval=log_interval_s, maxinterval=max(log_interval_s, 10.0), **options
    )
