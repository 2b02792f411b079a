"""Where a model pair's weights live: one device, an accelerate device map, or one placement per model.

Parsed and validated before any weights are read; sharding itself is transformers/accelerate's
(``from_pretrained(device_map=..., max_memory=...)``).

- ``device``: the whole model on one device (``cpu``, ``cuda:1``, ``mps``);
- ``device_map``: ``auto`` / ``balanced`` / ``balanced_low_0`` / ``sequential`` (accelerate fills
  the devices), or a JSON file mapping module names to devices (``{"model.embed_tokens": 0,
  "model.layers.0": 0, ..., "lm_head": 1}``);
- ``max_memory``: per-device caps for the ``auto``/``balanced`` maps, ``0=20GiB,1=20GiB,cpu=60GiB``;
- ``base_device`` / ``ft_device``: a device or a device map for one model of the pair only,
  overriding ``device``/``device_map`` for that model (base on GPU 0, finetuned on GPU 1).

Placement never changes results, so it is part of no fingerprint.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import ConfigError

DEVICE_MAP_STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")

DeviceMap = Union[str, dict[str, Union[int, str]]]
MaxMemory = dict[Union[int, str], str]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def _check_device(value: Any, where: str) -> int | str:
    """A device accelerate accepts: a GPU index, 'cpu', 'disk', or a torch device string."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a device (use a GPU index, 'cpu', 'disk' or 'cuda:N').")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: GPU index {value} must be ≥ 0.")
        return value
    if isinstance(value, str):
        if value == "disk":
            return value
        if value.isdigit():
            return int(value)
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ConfigError(f"{where}: '{value}' is not a device (use a GPU index, 'cpu', 'disk', "
                              "'cuda:N' or 'mps').") from None
        return value
    raise ConfigError(f"{where}: {value!r} is not a device (use a GPU index, 'cpu', 'disk' or 'cuda:N').")


def parse_max_memory(text: str | dict[Any, Any] | None) -> MaxMemory | None:
    """``0=20GiB,cpu=60GiB`` → ``{0: '20GiB', 'cpu': '60GiB'}`` (accelerate's ``max_memory``).

    Keys are GPU indices, ``cpu``, ``disk``, ``mps`` or ``cuda:N`` (→ N); values a size with an
    optional unit (B, KB, MB, GB, TB and the KiB..TiB forms; a bare number is bytes).
    """
    if text is None or text == "" or text == {}:
        return None
    if isinstance(text, dict):
        items = [(str(k), str(v)) for k, v in text.items()]
    else:
        items = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ConfigError(f"--max-memory: '{part.strip()}' is not DEVICE=SIZE; write e.g. "
                                  "'0=20GiB,1=20GiB,cpu=60GiB'.")
            items.append((key.strip(), val.strip()))
        if not items:
            raise ConfigError("--max-memory is empty; write e.g. '0=20GiB,cpu=60GiB'.")
    out: MaxMemory = {}
    for key, val in items:
        if key.isdigit():
            dev: int | str = int(key)
        elif re.fullmatch(r"cuda:\d+", key):
            dev = int(key.split(":")[1])
        elif key in ("cpu", "disk", "mps"):
            dev = key
        else:
            raise ConfigError(f"--max-memory: unknown device '{key}' (use a GPU index like 0, 'cuda:0', "
                              "'cpu', 'mps' or 'disk').")
        m = _SIZE.match(val)
        if not m or float(m.group(1)) <= 0:
            raise ConfigError(f"--max-memory: '{val}' for device {key} is not a size; write e.g. 20GiB, "
                              "512MB or a number of bytes.")
        if dev in out:
            raise ConfigError(f"--max-memory: device {key} is given twice.")
        unit = m.group(2) or ""
        out[dev] = f"{m.group(1)}{unit.upper().replace('IB', 'iB')}" if unit else str(int(float(m.group(1))))
    return out


def load_device_map_file(path: str | Path) -> dict[str, int | str]:
    """A JSON device map file, validated: a non-empty object of module name → device."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"device map file {p} does not exist; give 'auto', 'balanced' or a JSON file "
                          "mapping module names to devices.")
    if not p.is_file():
        raise ConfigError(f"device map {p} is not a file.")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"device map file {p} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"device map file {p} must hold a non-empty JSON object of module name → device, "
                          f"e.g. {{\"model.embed_tokens\": 0, \"model.layers.0\": 0, \"lm_head\": 1}}.")
    out: dict[str, int | str] = {}
    for name, dev in raw.items():
        if not isinstance(name, str):
            raise ConfigError(f"device map file {p}: module name {name!r} is not a string.")
        out[name] = _check_device(dev, f"device map file {p}, module '{name}'")
    return out


def parse_device_map(value: str | dict[str, Any] | None) -> DeviceMap | None:
    """``auto``/``balanced``/... as they are, a dict validated, anything else read as a JSON file."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        if not value:
            raise ConfigError("device_map must not be empty.")
        return {str(k): _check_device(v, f"device_map, module '{k}'") for k, v in value.items()}
    if value in DEVICE_MAP_STRATEGIES:
        return value
    if not value.endswith(".json") and not Path(value).expanduser().exists():
        raise ConfigError(f"--device-map '{value}' is neither one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                          "nor a JSON file.")
    return load_device_map_file(value)


def _is_device_map(value: str) -> bool:
    return value in DEVICE_MAP_STRATEGIES or value.endswith(".json") or Path(value).expanduser().is_file()


@dataclass(frozen=True)
class SidePlacement:
    """Where one model goes: a single device, or a device map (with optional memory caps)."""

    device: str = "cpu"
    device_map: DeviceMap | None = None
    max_memory: MaxMemory | None = None

    @property
    def primary_type(self) -> str:
        """The device type the model computes on mostly ('cuda', 'cpu', ...)."""
        if self.device_map is None:
            return torch.device(self.device).type
        if isinstance(self.device_map, str):
            return "cuda" if torch.cuda.is_available() else "cpu"
        devs = set(self.device_map.values())
        if any(isinstance(d, int) or (isinstance(d, str) and d.startswith("cuda")) for d in devs):
            return "cuda"
        return "cpu"

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`difflens.models.sources.load_model`."""
        return {"device": self.device, "device_map": self.device_map, "max_memory": self.max_memory}


@dataclass(frozen=True)
class Placement:
    """The placement of a pair: one default for both models and optional per-model overrides."""

    base: SidePlacement
    ft: SidePlacement

    @property
    def split(self) -> bool:
        """Whether the two models are placed differently."""
        return self.base != self.ft


def _side(value: str | None, default: SidePlacement, max_memory: MaxMemory | None, what: str) -> SidePlacement:
    if value is None or value == "":
        return default
    if _is_device_map(value):
        return SidePlacement(device="cpu", device_map=parse_device_map(value), max_memory=max_memory)
    _check_device(value, what)
    _check_available(value, what)
    return SidePlacement(device=value)


def _check_available(device: str, what: str) -> None:
    dev = torch.device(int(device) if device.isdigit() else device)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise ConfigError(f"{what} {device}: this machine has {n} CUDA device(s).")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what} {device}: MPS is not available on this machine.")


def make_placement(*, device: str = "cpu", device_map: str | dict[str, Any] | None = None,
                   max_memory: str | dict[Any, Any] | None = None, base_device: str | None = None,
                   ft_device: str | None = None) -> Placement:
    """Validate every placement option (files read, sizes parsed) and combine them; raises
    :class:`~difflens.errors.ConfigError` before any model is loaded."""
    mm = parse_max_memory(max_memory)
    dm = parse_device_map(device_map)
    if mm is not None and dm is None and not any(v and _is_device_map(v) for v in (base_device, ft_device)):
        raise ConfigError("--max-memory caps what a device map may put on each device: give it with "
                          "--device-map auto (or balanced).")
    if dm is None:
        if isinstance(device, str) and device.isdigit():
            device = f"cuda:{device}"
        _check_device(device, "--device")
        _check_available(device, "--device")
    default = SidePlacement(device=device, device_map=dm, max_memory=mm if dm is not None else None)
    return Placement(base=_side(base_device, default, mm, "--base-device"),
                     ft=_side(ft_device, default, mm, "--ft-device"))


def input_device(model: torch.nn.Module, embedding: torch.nn.Module | None = None) -> torch.device:
    """Where a model's input ids must go: its token embedding's device (not ``model.device``, which
    for a dispatched model is merely that of its first parameter)."""
    if embedding is None:
        get = getattr(model, "get_input_embeddings", None)
        embedding = get() if callable(get) else None
    for p in (embedding.parameters() if embedding is not None else model.parameters()):
        if p.device.type != "meta":
            return p.device
    hook = getattr(embedding, "_hf_hook", None)  # offloaded embedding: accelerate's execution device
    dev = getattr(hook, "execution_device", None)
    return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}") if dev is not None else torch.device("cpu")


def module_device(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    """The device of a module's first materialised parameter (its accelerate execution device when
    offloaded), else ``fallback`` (a parameter-free module)."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return fallback


def align_inputs(model: torch.nn.Module, device: torch.device) -> None:
    """Let ``model`` take inputs on any device: accelerate's ``AlignDevicesHook`` moves them to
    ``device`` and the outputs back to where the inputs were. For models that are not dispatched
    (a whole model on one device) in a pair whose other model lives elsewhere; a dispatched model
    already carries such a hook."""
    if getattr(model, "_hf_hook", None) is not None or getattr(model, "_difflens_aligned", False):
        return
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    add_hook_to_module(model, AlignDevicesHook(execution_device=device, io_same_device=True))
    model._difflens_aligned = True  # type: ignore[attr-defined]
