# Two entry points (each installs what it needs):
#   make run   - install, then `python -m gdn demo`
#   make test  - install with test deps, then the CPU half of the matrix (Triton interpreter + AOT compile)
PY ?= python3
PIP ?= $(PY) -m pip
# CPU torch (taken from local disk on the dev/CI machines) and the triton that the GPU host has.
TORCH_PIN ?= torch==2.13.0
TRITON_PIN ?= triton==3.6.0

.PHONY: install install-test run test test-gpu info check

install:
	$(PIP) install -q $(TORCH_PIN) $(TRITON_PIN)
	$(PIP) install -q -e .

install-test: install
	$(PIP) install -q -e '.[test,hf,cuda]'

run: install
	$(PY) -m gdn demo

test: install-test
	$(PY) -m pytest -q -m "not gpu" tests

# On a GPU host (torch and triton already there; no index): the same matrix at full size.
test-gpu:
	$(PY) -m pytest -q -m gpu tests

info:
	$(PY) -m gdn info

check:
	$(PY) -m gdn check
