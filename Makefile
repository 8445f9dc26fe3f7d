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

# Captions the bundled sample clips with the demo checkpoint (random weights: the captions are noise),
# then scores them against the samples' Korean references: open demo-out/report/report.html.
demo: $(STAMP)
	$(BIN)/captioner run samples --out demo-out --adapter demo
	$(BIN)/captioner eval demo-out/captions.jsonl --refs samples/references.jsonl --out demo-out/report

# The report test opens the evaluation report in headless Chromium; the docker/ test validates the
# compose file with docker-compose (no Docker engine needed). Both are Debian packages.
test: $(STAMP)
	command -v chromium >/dev/null && command -v docker-compose >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk docker-compose; }
	$(BIN)/python -m pytest
