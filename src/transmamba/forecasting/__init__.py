"""transmamba.forecasting: long-horizon time-series forecasting with Mambaformer (arXiv 2404.14757).

One domain system in four files, the pattern every domain package follows (docs/forecasting.md):

    model.py   the network and its config dataclass (+ save_pretrained / from_pretrained)
    data.py    reading the user's files into ready batches (splits, scaling, windows)
    loop.py    the train / evaluate loop and the metrics
    plot.py    figures of predictions

`transmamba forecast` (commands/forecast.py) only parses flags and calls these.
"""

from transmamba.forecasting.data import ForecastData, ForecastDataError, ForecastWindows, load_forecast_data
from transmamba.forecasting.loop import TrainConfig, evaluate, forecast_step, mae, mse, train_forecaster
from transmamba.forecasting.model import ARCHS, MIXERS, Mambaformer, MambaformerConfig

__all__ = [
    "ARCHS",
    "MIXERS",
    "ForecastData",
    "ForecastDataError",
    "ForecastWindows",
    "Mambaformer",
    "MambaformerConfig",
    "TrainConfig",
    "evaluate",
    "forecast_step",
    "load_forecast_data",
    "mae",
    "mse",
    "train_forecaster",
]
