"""The interpretability agent (paper §3.1, App. C.4): its protocol lives in :mod:`.prompts`."""
