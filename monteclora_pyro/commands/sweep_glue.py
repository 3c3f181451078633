r"""Robustness sweep over learning rates, batch sizes and seeds for several methods on one GLUE task.

Every setting of a single run (``svi_glue.py --help``) applies to all cells, on the full training
set unless --max-train-samples says otherwise.  Resumable: finished cells (OUT/cells/<cell>/metrics.json)
are not rerun.  Writes OUT/sweep.csv (one row per cell), OUT/robustness.json (mean, std, min, max,
max - min per method) and OUT/plots/metric_vs_lr.png.

    python experiments/sweep_glue.py --task mrpc --lrs 1e-4,3e-4,1e-3,3e-3 --batch-sizes 16,32 \
        --seeds 0,1 --methods map,monteclora,peft-monteclora --output-dir results/sweeps/mrpc
"""

from __future__ import annotations

from ..runner.sweep import sweep_main
from ..tasks.glue.family import GlueFamily


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    return sweep_main(GlueFamily, __doc__, argv, prog, task="mrpc", max_train_samples=None)


if __name__ == "__main__":
    main()
