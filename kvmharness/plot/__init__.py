"""Figures from result files (``kvmharness plot``); needs the optional matplotlib extra.

Each scenario declares its figure (``ScenarioSpec.figure``, scenarios/presentation.py); this
package draws the kinds there are:

- ``Curves``: each metric family's median versus its key (slot size, memslot count,
  populated RAM), one line per side (label and variant) with the CI of the median as a
  band (95%, or what n allows), log-log axes;
- ``PassTimeline``: a guest's pass times over a run, one line per side, with the events
  that disturbed them marked (from a per-run timeline when the run recorded one, else per
  iteration).
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
