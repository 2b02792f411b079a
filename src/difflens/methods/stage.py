"""The ``methods`` stage: the diffing methods beside ADL on one run, then on the control pair.

Used by the pipeline (``difflens run`` with ``methods: [adl, mining, kl, amplify]``) and by
``difflens diff``: the pass methods (mining, kl) share one pass over the data
(:func:`~difflens.methods.driver.run_methods`), amplification samples on the steering prompts
(:func:`~difflens.methods.amplify.run_amplify`), and with ``control: noise`` all of them run again
on the base model against itself plus random weight noise of the finetune's size, into
``methods/<dataset>/control-noise/``. Every part is fingerprinted and reused when finished.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..rundir.layout import RunLayout

__all__ = ["run_methods_stage", "build_pass", "PASS_METHODS", "GENERATING_METHODS"]

PASS_METHODS = ("mining", "kl")
GENERATING_METHODS = ("amplify",)


def build_pass(chosen: Sequence[str], diff: Any) -> tuple[Any, list[Any]]:
    """The shared pass's config and its methods (checked before any model loads)."""
    from .driver import PassConfig, make_method
    from .kl import KLConfig
    from .mining import MiningConfig

    unknown = [m for m in chosen if m not in PASS_METHODS + GENERATING_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(('adl',) + PASS_METHODS + GENERATING_METHODS)}.")
    cfg = PassConfig(dataset=diff.dataset or "wiki", samples=diff.samples, tokens=diff.tokens,
                     batch_size=diff.batch_size)
    methods = []
    for name in chosen:
        if name == "mining":
            methods.append(make_method("mining", config=MiningConfig(top_k=diff.top_k, layer=diff.lens_layer)))
        elif name == "kl":
            methods.append(make_method("kl", config=KLConfig(layer=diff.kl_layer, skip_positions=diff.skip_positions)))
    return cfg, methods


def amplify_config(diff: Any, steering: Any | None) -> Any:
    from .amplify import AmplifyConfig

    opts = dict(diff.amplify)
    if steering is not None and "prompts" not in opts:
        opts["prompts"] = list(steering.prompts)
    return AmplifyConfig(**opts)


def run_methods_stage(get_pair: Callable[[], Any], layout: RunLayout, chosen: Sequence[str], diff: Any, *,
                      coherence: Callable[[], Any], dataset: str, steering: Any | None = None,
                      progress: bool = True) -> str:
    """Run ``chosen`` methods (and their control) on the run; a one-line summary."""
    diff = diff.model_copy(update={"dataset": dataset})
    cfg, pass_methods = build_pass(chosen, diff)
    acfg = amplify_config(diff, steering) if "amplify" in chosen else None
    bits: list[str] = []
    pair = get_pair()
    if pass_methods:
        from .driver import run_methods

        res = run_methods(pair, layout, pass_methods, cfg, progress=progress)
        if "mining" in res:
            bits.append("mining: " + " ".join(t.strip() for t in res["mining"].top_tokens("top_k", 6)))
        if "kl" in res:
            bits.append(f"KL mean {res['kl'].stats['kl'].mean:.3g}")
    amp = None
    if acfg is not None:
        from .amplify import run_amplify

        amp = run_amplify(pair, layout, acfg, coherence(), dataset=dataset, progress=progress)
        bits.append(f"amplify β={amp.beta:g}")
    if diff.control == "noise":
        from ..models.noise import noise_pair

        ctl = noise_pair(pair, scale=diff.control_scale, seed=diff.control_seed)
        try:
            if pass_methods:
                from .driver import run_methods

                _, fresh = build_pass(chosen, diff)  # methods hold per-pass state: new instances
                cres = run_methods(ctl, layout, fresh, cfg, progress=progress, control="noise")
                if "kl" in cres:
                    bits.append(f"noise control KL mean {cres['kl'].stats['kl'].mean:.3g}")
            if acfg is not None and amp is not None:
                from .amplify import run_amplify

                # the noise pair amplified at the real pair's β: the two differ only in the pair
                run_amplify(ctl, layout, acfg, coherence(), dataset=dataset, progress=progress, control="noise",
                            beta=amp.beta)
        finally:
            del ctl
    return "; ".join(bits)
