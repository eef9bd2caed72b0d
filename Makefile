# The two set-up commands of the README:  `make demo`  and  `make test`.
# Each creates .venv from the pinned lock file on first use (pip, not uv: only
# pip sees the machine's local CPU torch wheel that later extras pin).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -c requirements/lock.txt -e '.[dev]'
	touch $@

.PHONY: demo test bench clean
demo: $(STAMP)
	$(VENV)/bin/mtpforge demo

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/doctor_headers.py --json bench/out/doctor_headers.json

clean:
	rm -rf $(VENV) bench/out .pytest_cache
