"""Models: sources (embedded, local, GGUF, hub, LoRA, registered prefixes), architecture adapters,
validated pairs, tokens (BOS, padding, chat prompts) and the sentence embedder."""
