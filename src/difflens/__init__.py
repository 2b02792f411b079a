"""difflens: the Activation Difference Lens — read finetuning objectives out of activation differences.

Public API (implementation lives in the modules; the README's code map names them)::

    from difflens import load_pair, CollectConfig, collect, RunLayout, load_collected
    pair = load_pair("smollm2-135m-instruct", "organism:cake_bake")
    collect(pair, RunLayout("runs/x"), CollectConfig(samples=2000))
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import organisms as _organisms  # noqa: F401  (registers the `organism:` model source)
from .adl.collect import CollectConfig, Collected, collect, load_collected
from .adl.logit_lens import logit_lens
from .adl.patchscope import patchscope
from .adl.steering import SteeringConfig
from .errors import (ConfigError, DataError, DifflensError, IncompatiblePairError, LLMError, ModelSourceError,
                     RunDirError, UnsupportedArchitectureError)
from .graders import Graders, graders_for, make_graders
from .models.arch import ArchAdapter
from .models.pair import ModelPair, load_pair
from .models.sources import LoadedModel, load_model, register_resolver
from .organisms.spec import OrganismSpec, list_specs, load_spec
from .run.config import RunConfig, load_config
from .rundir.layout import RunLayout
from .run.pipeline import Runner
from .run.stages import LensConfig, run_lens, run_steer

__all__ = [
    "ArchAdapter", "CollectConfig", "Collected", "collect", "load_collected", "ConfigError", "DataError",
    "DifflensError", "IncompatiblePairError", "LLMError", "ModelSourceError", "RunDirError",
    "UnsupportedArchitectureError", "Graders", "graders_for", "make_graders", "RunLayout", "logit_lens",
    "patchscope", "LoadedModel", "load_model", "register_resolver", "ModelPair", "load_pair", "OrganismSpec",
    "list_specs", "load_spec", "RunConfig", "Runner", "load_config", "LensConfig", "run_lens", "run_steer",
    "SteeringConfig",
]
