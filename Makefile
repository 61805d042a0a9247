# One virtual environment (.venv), created on first use from setup.py and the
# pinned constraints.txt. Every target below builds it if needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Some machines cap pip with a global constraints file (e.g. /etc/xdg/pip); ours wins.
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check --no-input

.PHONY: venv demo test unit integration bench bench-decode bench-train bench-reliability image-check clean help

help:
	@echo "make demo     run the whole pipeline on synthetic studies (creates .venv)"
	@echo "make test     unit and integration tests (creates .venv)"
	@echo "make bench    throughput, latency, hot swap and decode -> bench/results/stream.json"
	@echo "make bench-train  the training recipe on PneumoniaMNIST -> bench/results/train.json"
	@echo "make bench-reliability  crashes, broker outage, hostile input, PHI -> bench/results/reliability.json"
	@echo "make image-check  build the CPU job image on a local Debian base and run medimg demo in it (slow, root or podman)"
	@echo "make clean    remove the virtual environment and demo files"

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medimg demo

unit: $(STAMP)
	$(PY) -m pytest unit_tests

integration: $(STAMP)
	$(PY) -m pytest integration_tests

test: $(STAMP)
	$(PY) -m pytest unit_tests integration_tests

bench: $(STAMP)
	$(PY) -m bench.stream_bench

bench-decode: $(STAMP)
	$(PY) -m bench.decode_bench

bench-train: $(STAMP)
	$(PY) -m bench.train_bench

bench-reliability: $(STAMP)
	$(PY) -m bench.reliability_bench

# Slow and needs root or podman: not part of make test (deploy/images/image-check.sh).
image-check:
	deploy/images/image-check.sh

clean:
	rm -rf $(VENV) .medimg-demo .pytest_cache
