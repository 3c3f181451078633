"""Training curves sent to TensorBoard or Weights & Biases (``--report-to``), through Accelerate's trackers.

The run's own record (``metrics.json``, ``plots/elbo.png``) does not depend on them: a tracker is a
second view of the same numbers, opened only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_tracker", "open_tracker"]

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_tracker(report_to: str) -> None:
    """Refuse, before any work, a tracker whose package is not installed (one line naming what to install)."""
    if report_to == "none":
        return
    import importlib.util

    package = PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"report_to = {report_to!r} needs the {package} package: pip install {package}")


def open_tracker(report_to: str, run_name: str, logging_dir: str | Path, settings: dict[str, Any]):
    """An Accelerate tracker (``log(values, step)``, ``finish()``) with the run's settings stored, or None."""
    if report_to == "none":
        return None
    check_tracker(report_to)
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    if report_to == "tensorboard":
        tracker = TensorBoardTracker(run_name, logging_dir=str(logging_dir))
    else:
        tracker = WandBTracker(run_name)
    tracker.start()  # Accelerate's trackers open their writer here
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items()}
    tracker.store_init_configuration(flat)
    return tracker
