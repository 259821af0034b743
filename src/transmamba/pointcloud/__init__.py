"""transmamba.pointcloud: point-cloud classification with PoinTramba (arXiv 2405.15463).

The domain-system pattern (as transmamba.forecasting):

    ops.py     farthest point sampling, kNN grouping (plain batched torch)
    model.py   the network, its config dataclass and presets (+ save_pretrained / from_pretrained)
    data.py    generated synthetic shapes; ModelNet40 / ScanObjectNN loaders by path; augmentations
    loop.py    the train / evaluate loop and the metrics (overall and mean class accuracy)
    plot.py    confusion matrix and importance-coloured cloud PNGs

`transmamba pointcloud` (commands/pointcloud.py) only parses flags and calls these.
"""

from transmamba.pointcloud.model import (
    MIXERS,
    ORDERINGS,
    POOLINGS,
    PRESETS,
    PoinTramba,
    PoinTrambaConfig,
    PoinTrambaOutput,
    attention_baseline,
)
from transmamba.pointcloud.ops import farthest_point_sample, group_points, knn

__all__ = [
    "MIXERS",
    "ORDERINGS",
    "POOLINGS",
    "PRESETS",
    "PoinTramba",
    "PoinTrambaConfig",
    "PoinTrambaOutput",
    "attention_baseline",
    "farthest_point_sample",
    "group_points",
    "knn",
]
