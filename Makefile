# The two entry points of the README. Both create ./.venv and install cmgl into it on first use.
#   make main   pack IU-RR (real reports + phantom images unless IMAGES=...), train, evaluate
#   make test   the test suite (what CI runs)
# Run pytest as `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path,
# where the folder kernels/ would shadow the PyPI package `kernels` that transformers probes for.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: main test install
install: $(STAMP)

$(STAMP): setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install -q -e '.[offline,test]'
	rm -f $(VENV)/.installed-* && touch $@

main: $(STAMP)
	$(VENV)/bin/cmgl main $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)
