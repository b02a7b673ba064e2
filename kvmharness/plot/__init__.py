"""Figures from result files (``kvmharness plot``); needs the optional matplotlib extra.

- slot-ops: latency of each memslot operation versus slot size, one line per side (label
  and variant) with the CI of the median as a band (95%, or what n allows), log-log axes;
- rom-toggle: the hammer's pass times over a run, one line per side, with the ROM deletes
  marked (from a per-run timeline when the run recorded one, else per iteration);
- teardown: VM destroy time (and the probe's worst delay) versus populated RAM.
"""

from __future__ import annotations

from kvmharness.plot.figures import (
    INSTALL_HINT,
    PlotError,
    PlotUnavailable,
    plot_files,
    plot_kinds,
)

__all__ = ["INSTALL_HINT", "PlotError", "PlotUnavailable", "plot_files", "plot_kinds"]
