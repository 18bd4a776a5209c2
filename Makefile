# The two entry points of the README. Both create ./.venv and install cmgl into it on first use,
# every package at the version requirements.lock pins (a change of setup.py or the lock reinstalls).
#   make main   pack IU-RR (real reports + phantom images unless IMAGES=...), train, evaluate
#   make test   the test suite (what CI runs)
#   make lock   re-resolve requirements.lock from setup.py with pip-tools (in ./.venv-lock), keeping
#               the pins that still fit; LOCK_ARGS=--upgrade (or "-P PACKAGE") moves them on
#   make eval-nih  external evaluation of a trained export (EXPORT=...) on the 354 real NIH images
#   make gpu-check the GPU check into OUT (default gpu_check_out/); OFFLINE=WHEELS installs from wheels;
#                  DRY=1 runs every stage tiny on a CPU (benchmarks/gpu_check.sh)
# Run pytest as `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path,
# where the folder kernels/ would shadow the PyPI package `kernels` that transformers probes for.
PYTHON ?= python3
VENV   ?= .venv
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed-$(shell cat setup.py $(LOCK) | cksum | cut -d' ' -f1)
LOCK_VENV ?= .venv-lock
PIP_TOOLS ?= pip-tools==7.6.2

NIH_IMAGES ?= ../shared/data/real-cxr/nih-cxr14-reproduce-chexnet
EXPORT     ?= outputs/run/export
# OFFLINE=DIR: install from the wheels in DIR (`pip download -d DIR -c requirements.lock -e '.[offline,test]'`), no index
PIP_SOURCE := $(if $(OFFLINE),--no-index --find-links $(OFFLINE))

.PHONY: main test install lock eval-nih gpu-check
install: $(STAMP)

$(STAMP): setup.py $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q $(PIP_SOURCE) --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install -q $(PIP_SOURCE) -c $(LOCK) -e '.[offline,test]'
	rm -f $(VENV)/.installed-* && touch $@

# The lock is resolved for this machine's platform and Python (Linux x86_64, CPython 3.11 here);
# torch is PyPI's CUDA build with its nvidia-* wheels. pip-tools lives in its own venv so that it
# never enters the project's. pip-compile does not read a constraint file set in pip's configuration
# (a machine that caps torch, say): pass it as LOCK_ARGS="-c FILE".
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || \
		($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install -q $(PIP_TOOLS))
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --strip-extras \
		--extra offline --extra test --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
		--output-file $(LOCK) setup.py

main: $(STAMP)
	$(VENV)/bin/cmgl main $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Zero-shot and a 5-fold (by patient) linear probe over every image of the NIH pack, with CIs.
eval-nih: $(STAMP)
	$(VENV)/bin/cmgl pack --source nih --images $(NIH_IMAGES) --image-size 256 --out outputs/shards-nih
	$(VENV)/bin/cmgl verify outputs/shards-nih
	$(VENV)/bin/cmgl evaluate --exports $(EXPORT) --shards outputs/shards-nih --out outputs/eval-nih \
		--split all --tasks zero_shot probe_cv --folds 5

OUT ?= gpu_check_out
gpu-check: $(STAMP)
	$(VENV)/bin/cmgl bench gpu --out $(OUT) $(if $(OFFLINE),--offline $(OFFLINE)) $(if $(filter 1,$(DRY)),--dry)
