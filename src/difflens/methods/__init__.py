"""Diffing methods beside ADL, each a unit over one shared pass of base and finetuned model.

- :mod:`.base`: the interface (:class:`DiffMethod`, :class:`PairBatch`, :class:`MethodResult`);
- :mod:`.mining`: diff mining (top-K occurrence of the logit difference per vocabulary id);
- :mod:`.kl`: per-token KL(P_ft‖P_base) and activation differences at a layer, with top contexts;
- :mod:`.store`: the SQLite store of example contexts a viewer pages through;
- :mod:`.driver`: the shared, resumable pass (:func:`run_methods`);
- :mod:`.amplify`: logit-difference amplification, sampling from l_ft + β·(l_ft − l_base)
  (:func:`run_amplify`; it generates text instead of reading the shared pass).
"""
from __future__ import annotations

from .amplify import GENERATING, AmplifyConfig, AmplifyResult, AmplifySample, BetaVerdict, run_amplify
from .base import DiffMethod, MethodResult, PairBatch, PassContext
from .driver import METHODS, PassConfig, load_result, make_method, open_examples, run_methods
from .kl import KLConfig, KLResult, TokenKL
from .mining import DiffMining, MiningConfig, MiningResult, TokenStat
from .store import Example, ExamplesStore

__all__ = ["DiffMethod", "MethodResult", "PairBatch", "PassContext", "METHODS", "PassConfig", "load_result",
           "make_method", "open_examples", "run_methods", "KLConfig", "KLResult", "TokenKL", "DiffMining",
           "MiningConfig", "MiningResult", "TokenStat", "Example", "ExamplesStore", "GENERATING", "AmplifyConfig",
           "AmplifyResult", "AmplifySample", "BetaVerdict", "run_amplify"]
