"""transmamba.diffusion: conditional image diffusion with Dimba (arXiv 2406.01159) and its baselines.

The domain-package pattern (see transmamba.forecasting):

    model.py     Dimba, BiMamba, the attention-only / Mamba-only baselines, presets (+ save/load)
    schedule.py  diffusers' noise schedulers, the IDDPM loss, guided sampling, EMA
    data.py      digits (default), a folder of images, optional text encoder and VAE
    loop.py      training (checkpoints, sample grids), generation, evaluation
    evaluate.py  the classifier-based quality proxy (class accuracy, Fréchet distance)
    plot.py      sample grids as PNG

`transmamba diffuse` (commands/diffuse.py) only parses flags and calls these.
"""

from transmamba.diffusion.data import DiffusionDataError, ImageData, load_image_data
from transmamba.diffusion.loop import TrainConfig, evaluate_model, generate, load_model, train_diffusion
from transmamba.diffusion.model import (
    ARCHS,
    MIXERS,
    PRESETS,
    BiMamba,
    Dimba,
    DimbaConfig,
    count_parameters,
    equal_params_config,
    preset_config,
)

__all__ = [
    "ARCHS",
    "MIXERS",
    "PRESETS",
    "BiMamba",
    "DiffusionDataError",
    "Dimba",
    "DimbaConfig",
    "ImageData",
    "TrainConfig",
    "count_parameters",
    "equal_params_config",
    "evaluate_model",
    "generate",
    "load_image_data",
    "load_model",
    "preset_config",
    "train_diffusion",
]
