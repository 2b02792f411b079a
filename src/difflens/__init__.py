"""difflens: the Activation Difference Lens — read finetuning objectives out of activation differences.

Public API (see README and the modules named in it)::

    from difflens import load_pair, CollectConfig, collect, RunLayout, load_collected
    pair = load_pair("smollm2-135m-instruct", "organism:cake_bake")
    collect(pair, RunLayout("runs/x"), CollectConfig(samples=2000))
"""
from __future__ import annotations

__version__ = "0.1.0"

from .arch import ArchAdapter
from .collect import CollectConfig, Collected, collect, load_collected
from .errors import (ConfigError, DataError, DifflensError, IncompatiblePairError, LLMError, ModelSourceError,
                     RunDirError, UnsupportedArchitectureError)
from .layout import RunLayout
from .lens import logit_lens, patchscope
from .models import LoadedModel, load_model
from .pair import ModelPair, load_pair
from .runner import RunConfig, Runner, load_config
from .stages import run_lens, run_steer
from .steering import SteeringConfig

__all__ = [
    "ArchAdapter", "CollectConfig", "Collected", "collect", "load_collected", "ConfigError", "DataError",
    "DifflensError", "IncompatiblePairError", "LLMError", "ModelSourceError", "RunDirError",
    "UnsupportedArchitectureError", "RunLayout", "logit_lens", "patchscope", "LoadedModel", "load_model",
    "ModelPair", "load_pair", "RunConfig", "Runner", "load_config", "run_lens", "run_steer", "SteeringConfig",
]
