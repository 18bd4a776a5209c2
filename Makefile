# The two entry points of the README. Both create ./.venv and install cmgl into it on first use,
# every package at the version requirements.lock pins (a change of setup.py or the lock reinstalls).
#   make main   pack IU-RR (real reports + phantom images unless IMAGES=...), train, evaluate
#   make test   the test suite (what CI runs)
#   make lock   re-resolve requirements.lock from setup.py with pip-tools (in ./.venv-lock), keeping
#               the pins that still fit; LOCK_ARGS=--upgrade (or "-P PACKAGE") moves them on
#   make eval-nih  external evaluation of a trained export (EXPORT=...) on the 354 real NIH images
#   make gpu-check the GPU check into OUT (default gpu_check_out/) with the venv; DRY=1 runs every
#                  stage tiny on a CPU (benchmarks/gpu_check.sh)
#   make gpu-wheels    (with the package index) the wheels and input files the offline GPU machine lacks, into .whl/
#   make gpu-check-box the GPU check on a GPU machine without network: its own python3 and .whl/, no venv
#   make gpu-box-sim   that machine simulated on this one (tests/test_gpu_box_sim.py; needs the index and unshare)
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

.PHONY: main test install lock eval-nih gpu-check gpu-wheels gpu-check-box gpu-box-sim
install: $(STAMP)

$(STAMP): setup.py $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install -q -c $(LOCK) -e '.[offline,test]'
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
	$(VENV)/bin/cmgl bench gpu --out $(OUT) --source $(CURDIR) $(if $(filter 1,$(DRY)),--dry)

# The offline GPU machine has Python $(GPU_PYTHON) with torch, triton, torchvision, transformers and
# nvidia-ml-py (and their dependencies), no network, and room for 64 MiB beside the repository:
# `make gpu-wheels` fills GPU_WHEELS with the pinned wheels of benchmarks/gpu_wheels*.txt (what the
# check needs beyond that set; no Ray: too big, and no stage needs it), the three input files
# (inputs/) and the commit (COMMIT), and fails when the folder exceeds the room.
GPU_WHEELS ?= .whl
GPU_SITE   ?= .gpu_site
GPU_PYTHON ?= 3.12
GPU_BOX_PYTHON ?= python3
GPU_WHEELS_MAX_MB ?= 64
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(VENV)/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) -r benchmarks/gpu_wheels.txt
	$(VENV)/bin/python -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) -r benchmarks/gpu_wheels_built.txt
	$(VENV)/bin/python -P benchmarks/gpu_inputs.py collect $(GPU_WHEELS)/inputs
	$(VENV)/bin/python -P -c 'from cmgl_dist.bench.harness import git_commit; print(git_commit())' > $(GPU_WHEELS)/COMMIT
	@size=$$(du -sb $(GPU_WHEELS) | cut -f1); echo "$(GPU_WHEELS): $$size bytes"; \
		test $$size -le $$(($(GPU_WHEELS_MAX_MB) * 1048576)) || { echo "$(GPU_WHEELS) exceeds $(GPU_WHEELS_MAX_MB) MiB"; exit 1; }

# No venv and nothing from the network: the wheels go into GPU_SITE (pip --no-index --no-deps
# --target), the project on the path as setup.py maps it; the same stages as gpu-check.
gpu-check-box:
	@test -d $(GPU_WHEELS) || { echo "no $(GPU_WHEELS)/: run make gpu-wheels where the package index is reachable"; exit 2; }
	WHEELS=$(abspath $(GPU_WHEELS)) SITE=$(abspath $(GPU_SITE)) OUT=$(OUT) DRY=$(if $(filter 1,$(DRY)),1,0) \
		PY=$(GPU_BOX_PYTHON) bash benchmarks/gpu_check.sh

gpu-box-sim: $(STAMP)
	CMGL_BOX_SIM=1 $(VENV)/bin/pytest -p no:cacheprovider tests/test_gpu_box_sim.py $(PYTEST_ARGS)
