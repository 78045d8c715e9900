"""Progress reporting for every loop over images or iterations: one helper, :func:`progress`.

* stderr is a terminal: a tqdm bar, as usual;
* stderr is not a terminal (CI, ``nohup``, ``wsss demo > log 2>&1``, a recipe's log file): no carriage-return frames,
  but one plain log line (logger ``wsss.progress``, level INFO) every ``WSSS_PROGRESS_SECONDS`` seconds (default
  :data:`DEFAULT_INTERVAL`; 0 turns the lines off) and one when the loop ends, e.g.
  ``INFO wsss.progress: train: 400/2000 it (20%), 3.1 it/s, 2m09s elapsed, ~8m36s left, loss=0.412``.
  ``wsss`` shows these lines at its default verbosity; as a library they follow your logging setup.

:func:`close_bars` ends the terminal bars still on screen, so an error message printed after it starts on its own
line instead of being glued to a half-drawn bar (the CLI calls it before printing an error).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable

log = logging.getLogger("wsss.progress")

INTERVAL_ENV = "WSSS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0


def progress_interval() -> float:
    """Seconds between two progress lines outside a terminal (``$WSSS_PROGRESS_SECONDS``, default 10; 0: none)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced streams
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, leave: bool = True):
    """A progress reporter over ``iterable`` (or driven by ``update``): a tqdm bar when stderr is a terminal, else
    periodic log lines (see the module doc); ``enabled=False`` reports nothing. The object returned supports what
    wsss uses of tqdm: iteration, ``update(n)``, ``set_postfix(**values)``, ``close()`` and ``with``."""
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled:
        return _LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=0, final=False)
    if _is_terminal(sys.stderr):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True,
                    file=sys.stderr)
    interval = progress_interval()
    return _LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, interval=interval,
                        final=interval > 0 and leave)


def close_bars() -> None:
    """Close every tqdm bar still open (each ends its line), so that what is printed next starts on a new line."""
    module = sys.modules.get("tqdm")
    cls = getattr(module, "tqdm", None)
    for bar in list(getattr(cls, "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _LogProgress:
    """tqdm's interface, reporting as a log line every ``interval`` seconds (and at the end when ``final``)."""

    def __init__(self, iterable, *, total, desc, unit, initial, interval, final):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.interval = interval
        self.final = final
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.logged = False
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.interval > 0:
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self._log(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values: Any) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.final or (self.logged and self.interval > 0):
            if self.n > self.initial or self.logged:
                self._log(time.monotonic(), done=True)

    def _log(self, now: float, done: bool = False) -> None:
        self.logged = True
        elapsed = now - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} {'in all' if done else 'elapsed'}")
        if not done and self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        log.info("%s: %s%s", self.desc or "progress", ", ".join(parts), " (done)" if done else "")
