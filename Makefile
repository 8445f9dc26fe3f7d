# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

# Captions the bundled sample clips with the demo checkpoint (random base weights; on the first run
# its LoRA adapter is trained on synthetic scenes, about two minutes) and with the base model alone,
# then scores both against the samples' Korean references: open demo-out/report/report.html.
demo: $(STAMP)
	$(BIN)/captioner run samples --out demo-out --adapter demo --adapter none --sampling deterministic
	$(BIN)/captioner eval demo-out --refs samples/references.jsonl --out demo-out/report \
		--adapter demo --against demo-out --against-adapter none

# The report test opens the evaluation report in headless Chromium; the docker/ test validates the
# compose file with docker-compose (no Docker engine needed). Both are Debian packages.
test: $(STAMP)
	command -v chromium >/dev/null && command -v docker-compose >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk docker-compose; }
	$(BIN)/python -m pytest
