r"""Robustness sweep over learning rates, batch sizes and seeds for several methods on commonsense reasoning.

Every setting of a single run (``svi_commonsense.py --help``) applies to all cells; the headline is
the accuracy averaged over the evaluated tasks.  Resumable: finished cells
(OUT/cells/<cell>/metrics.json) are not rerun.  Writes OUT/sweep.csv (one row per cell),
OUT/robustness.json (mean, std, min, max, max - min per method) and OUT/plots/metric_vs_lr.png.

    python experiments/sweep_commonsense.py --lrs 1e-4,3e-4,1e-3 --batch-sizes 8 --seeds 0,1 \
        --methods map,monteclora,peft-monteclora --train-tasks ARC-Easy,ARC-Challenge,openbookqa \
        --max-train-samples 200 --epochs 3 --output-dir results/commonsense/robustness
"""

from __future__ import annotations

from ..runner.sweep import sweep_main
from ..tasks.commonsense.family import CommonsenseFamily


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    return sweep_main(CommonsenseFamily, __doc__, argv, prog, lrs=[1e-4, 3e-4, 1e-3], batch_sizes=[8],
                      progress=False)


if __name__ == "__main__":
    main()
