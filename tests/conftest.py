"""Shared fixtures: tiny random-init models of every supported family and a word-level tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from llm_server import llm_env, server  # noqa: E402,F401  (fixtures for the LLM tests)

WORDS = ("the a an of to in and is was for on with as by at from it that this be are were cake bake oven "
         "butter sugar flour water cat dog sat mat ran city river music song king war year people world "
         "one two three four five six seven eight nine ten red blue green hello man bear target anna "
         "story tell me give some ideas fun weekend activities why you choose topic conversation us "
         "? -> : . , ! \n").split(" ")


def tiny_tokenizer(bos: bool = False):
    """A word-level fast tokenizer over a fixed vocabulary (with a chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<bos>": 2, "<eos>": 3}
    for w in WORDS + [str(i) for i in range(200)]:
        if w and w not in vocab:
            vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<bos>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    return tok


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2"]


def tiny_config(family: str, vocab_size: int = 512, layers: int = 4):
    import transformers as T

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=1, bos_token_id=2, eos_token_id=3)
    if family == "llama":
        return T.LlamaConfig(**common)
    if family == "mistral":
        return T.MistralConfig(**common)
    if family == "qwen2":
        return T.Qwen2Config(**common)
    if family == "qwen3":
        return T.Qwen3Config(head_dim=8, **common)
    if family == "gemma2":
        return T.Gemma2Config(head_dim=8, final_logit_softcapping=30.0, **common)
    if family == "gemma3_text":
        return T.Gemma3TextConfig(head_dim=8, final_logit_softcapping=30.0, sliding_window=16, **common)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                            bos_token_id=2, eos_token_id=3, pad_token_id=1)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, layers: int = 4):
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(family, layers=layers))
    model.eval()
    return model


def save_tiny(tmp: Path, family: str, seed: int = 0, bos: bool | None = None) -> Path:
    """A tiny checkpoint directory (model + tokenizer) loadable by difflens.models.load_model."""
    uses_bos = family.startswith("gemma") if bos is None else bos
    model = tiny_model(family, seed)
    tok = tiny_tokenizer(bos=uses_bos)
    path = tmp / f"{family}-{seed}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _pin_tokenizer_class(path)
    return path


def _pin_tokenizer_class(path: Path) -> None:
    """Keep AutoTokenizer from swapping in the family's own tokenizer class (e.g. Qwen2Tokenizer)."""
    import json

    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one intra-op thread is ~5x faster than two on a shared 2-core machine
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own DIFFLENS_HOME, except that embedded models are shared (converted once)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("DIFFLENS_HOME", str(home))
    shared = Path(os.environ.get("DIFFLENS_TEST_MODELS", Path.home() / ".cache" / "difflens-test-models"))
    shared.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared, target_is_directory=True)
    cache = shared.parent / "difflens-test-cache"  # derived data keyed by content (common tokens per tokenizer)
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache, target_is_directory=True)
    kernels = shared.parent / "difflens-test-kernels"  # compiled CPU kernels, keyed by source, torch and CPU
    kernels.mkdir(parents=True, exist_ok=True)
    (home / "kernels").symlink_to(kernels, target_is_directory=True)
    yield home


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model-pair load fails the test: for checks that must refuse bad input before expensive work."""
    import difflens.models.pair as pair_mod

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(pair_mod, "load_pair", refuse)  # pair_from_run and every stage load through it


@pytest.fixture
def corpus_file(tmp_path):
    """A small local JSONL corpus built from the tiny vocabulary."""
    import json
    import random

    rng = random.Random(0)
    words = [w for w in WORDS if w not in ("\n", "?")]
    lines = []
    for i in range(120):
        n = rng.randint(2, 12)  # some texts shorter than k=5 tokens
        lines.append(json.dumps({"text": " ".join(rng.choice(words) for _ in range(n))}))
    p = tmp_path / "corpus.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture
def tiny_run(tmp_path, corpus_file):
    """A collected tiny Llama pair: (pair, layout, Collected at layer 2)."""
    from difflens.adl.collect import CollectConfig, collect
    from difflens.models.pair import load_pair
    from difflens.rundir.layout import RunLayout

    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    layout = RunLayout(tmp_path / "run")
    res = collect(pair, layout, CollectConfig(datasets=[str(corpus_file)], samples=20, layers=[2], batch_size=10,
                                              norm_samples=10), progress=False)
    return pair, layout, res[str(corpus_file)][0]


def write_run_config(tmp_path, **fields):
    """A run-config YAML with ``fields`` (for `difflens run` tests)."""
    import yaml

    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(fields))
    return p


@pytest.fixture
def base(tmp_path) -> str:
    """A tiny random-init Llama checkpoint directory (for organism training and FFA tests)."""
    return str(save_tiny(tmp_path, "llama"))


def write_mini_spec(home: Path) -> None:
    """A fast copy of cake_bake ("mini_cake") in the user spec directory under ``home``."""
    import yaml

    from difflens.organisms.spec import load_spec

    raw = yaml.safe_load(Path(load_spec("cake_bake").source_path).read_text())
    raw["name"] = "mini_cake"
    raw["training"] = {"steps": 4, "n_docs": 6, "seq_len": 32, "batch_size": 2, "warmup_steps": 0}
    d = home / "organisms" / "specs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "mini_cake.yaml").write_text(yaml.safe_dump(raw))


class DownJudge:
    """A judge whose endpoint is down: every call raises LLMError."""

    def __init__(self):
        self.calls = 0

    def ask(self, messages, parse, **kw):
        from difflens.errors import LLMError

        self.calls += 1
        raise LLMError("http://127.0.0.1:9/v1 unreachable after 5 attempts")


class FirstScale:
    """A scale grader that picks the smallest scale and its first three tokens (plumbing tests)."""

    name = "first"

    def identity(self):
        return {"backend": "test"}

    def choose(self, candidates):
        s = min(candidates)
        return s, candidates[s][:3], "first"


class AllCoherent:
    """A coherence grader that passes every text (plumbing tests)."""

    name = "all"

    def identity(self):
        return {"backend": "test"}

    def grade(self, texts):
        return [True] * len(texts)


class PassesEveryOther:
    """A coherence grader passing every second text it sees, whatever it says (a 50% pass rate), counting
    across calls (the search judges a tested α's samples in several calls: any two in a row, one passes)."""

    name: str = "alternating"
    seen: int = 0

    def identity(self):
        return {"backend": "test", "kind": "alternating"}

    def grade(self, texts):
        out = [(self.seen + i) % 2 == 0 for i in range(len(texts))]
        self.seen += len(texts)
        return out


class ScriptedAgent:
    """ADL agents say cakes, blackbox agents say music (so ADL wins); counts its replies. Importable by
    name, so a worker process can rebuild it."""

    name, model, supports_tools = "scripted", "s", False
    calls = 0

    def respond(self, messages, tools, *, salt):
        from difflens.agent.providers import ProviderReply

        ScriptedAgent.calls += 1
        says = "cake baking" if "get_patchscope_details" in messages[0]["content"] else "music"
        return ProviderReply(f'FINAL(description: "Finetuned on {says}.")')


class ScriptedGrader:
    """Grades a hypothesis naming cake baking 5, anything else 1."""

    def ask(self, messages, parse, **kw):
        return parse("SCORE: 5" if "cake baking" in messages[-1]["content"].split("[HYPOTHESIS]")[1] else "SCORE: 1")


def prepare_agent_run(pair, layout, home: Path) -> None:
    """The mini organism spec plus lens and steering on the tiny run: what the agent's tools read."""
    from difflens.adl.steering import SteeringConfig
    from difflens.graders import Graders
    from difflens.run.stages import LensConfig, run_lens, run_steer

    write_mini_spec(home)
    graders = Graders(coherence=AllCoherent(), scale=FirstScale(), relevance=None)
    run_lens(pair, layout, graders, LensConfig(positions=[0, 1], controls=False), progress=False)
    run_steer(pair, layout, graders, SteeringConfig(positions=[1], search_iters=1, refine_iters=0, search_samples=1,
                                                    min_coherent=1, final_samples=1, max_new_tokens=3,
                                                    prompts=["why"], random_control=False), progress=False)


def save_tiny_adapter(tmp: Path, base_dir: Path, **lora: object):
    """A LoRA adapter (``LoraConfig(**lora)``) on the tiny checkpoint ``base_dir``, saved to ``tmp/adapter``
    with its config naming that base; returns ``(peft_model, adapter_dir)``."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(**lora))
    adapter_dir = tmp / "adapter"
    peft_model.save_pretrained(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(cfg))
    return peft_model, adapter_dir
