"""Progress of a long job, with its rate and ETA: a tqdm bar on a terminal, log lines otherwise.

    with Progress(total=len(shards), what="shards", desc="encode") as progress:
        ...
        progress.update(1, docs=1200)

On a terminal (stderr is a TTY) a tqdm bar redraws in place; in a log file, a job log or CI, a bar would be
thousands of carriage returns, so a line is logged at most every ``every_s`` seconds (and at the end) with
done/total, the rate and the ETA. ``extra`` counters (documents beside shards, say) ride along.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("laconic_ray.progress")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``total`` units of ``what`` to do (None: unknown, no ETA); ``update(n, **counters)`` as they finish."""

    def __init__(
        self,
        total: int | None,
        what: str,
        desc: str,
        *,
        every_s: float = 10.0,
        bar: bool | None = None,
        final: bool = True,
        sink: Callable[[str], None] | None = None,
    ) -> None:
        """``final``: a line when ``total`` is reached (off where someone else reports completion);
        ``sink``: where lines go (default: this module's logger at INFO)."""
        self.total, self.what, self.desc, self.every_s = total, what, desc, every_s
        self.final, self.sink = final, sink or (lambda line: log.info("%s", line))
        self.done = 0
        self.counters: dict[str, float] = {}
        self.started = self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {what}", dynamic_ncols=True, file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1, **counters: float) -> None:
        self.done += n
        for key, value in counters.items():
            self.counters[key] = self.counters.get(key, 0) + value
        if self._bar is not None:
            self._bar.update(n)
            if self.counters:
                self._bar.set_postfix({k: f"{v:g}" for k, v in self.counters.items()}, refresh=False)
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if (now - self._last >= self.every_s and not finished) or (finished and self.final):
            self._last = now
            self.sink(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        parts = [f"{self.desc}: {self.done}{of} {self.what}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.what}/s")
        parts += [f"{v:g} {k} ({v / elapsed:.3g}/s)" for k, v in self.counters.items()]
        if self.total is not None and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
