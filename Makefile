# lumbar: make setup · test · data · train · local-score · predict · kernel · demo · bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch pair of the main venv (this machine's Python; its wheels lie on disk here); installed first so
# pip does not pick another build.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
# The Kaggle image whose library versions the main venv trains and tests under (constraints/NAME.txt):
# kaggle-2026, the image a kernel pushed today runs on; kaggle-2024, the competition-period image (pin the
# kernel to it with KAGGLE_DOCKER_IMAGE, docs/kaggle.md). Weights load in either (their probes decide).
KAGGLE_IMAGE ?= kaggle-2026
CONSTRAINTS := constraints/$(KAGGLE_IMAGE).txt
# Each image as its own venv, for running the built kernel in it (the slow tests in tests/test_images.py):
# its Python, its torch, its pins. The 2026 image's Python 3.12 and torch 2.10 come from the package
# registry (7.3 GB in the venv with its CUDA libraries); the 2024 image had Python 3.10 and torch 2.4: its
# venv keeps this machine's Python and the pins that matter for what is serialised (numpy, scikit-learn,
# xgboost), and borrows torch from the main venv (BASE_*): a .pth puts the main venv's site-packages
# after its own, so every pinned library is its own and torch's 5.5 GB is not written twice.
# CI's disk is not ours to size: pip keeps no cache (3 GB of torch wheels), and each venv checks first
# that the disk has NEED_GB_* free, so a full disk is named before pip half-installs.
PYTHON_kaggle-2026 ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
TORCH_kaggle-2026 ?= torch==2.10.0 torchvision==0.25.0
NEED_GB_kaggle-2026 ?= 8
PYTHON_kaggle-2024 ?= $(PYTHON)
BASE_kaggle-2024 ?= $(VENV)
NEED_GB_kaggle-2024 ?= 1
export PIP_NO_CACHE_DIR := 1
IMAGES := kaggle-2026 kaggle-2024
DEFAULT_DATA := data/synthetic
DATA ?= $(DEFAULT_DATA)
RUN ?= runs/default
MODEL ?= all
STUDIES ?= 200
TEST_STUDIES ?= 20
SEED ?= 0
PYTEST_ARGS ?=
REPORTS ?= reports
CACHE ?= cache

.PHONY: rehearsal demo setup images test test-fast data train export predict kernel train-stage-one local-score validate bench show clean curve

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install $(TORCH_PKGS) -c $(CONSTRAINTS)
	$(PY) -m pip install -e '.[dev]' -c $(CONSTRAINTS)
	$(PY) -m pip check
	echo $(KAGGLE_IMAGE) > $@

# The image venvs (.venv-kaggle-2026, .venv-kaggle-2024) that the kernel tests run the notebook in.
images: $(foreach i,$(IMAGES),.venv-$(i)/.installed)

.venv-%/.installed: pyproject.toml constraints/%.txt
	@test -n "$(PYTHON_$*)" || { echo "images: no Python for $* (set PYTHON_$*=/path/to/python)"; exit 2; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge "$(NEED_GB_$*)" ] || \
	  { echo "images: .venv-$* needs about $(NEED_GB_$*) GB free here, the disk has $$free GB (df -h .)"; exit 2; }
	$(PYTHON_$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --upgrade pip >/dev/null
	$(if $(BASE_$*),$(BASE_$*)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))" \
	  > $$(.venv-$*/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/lumbar-base.pth)
	$(if $(TORCH_$*),.venv-$*/bin/python -m pip install $(TORCH_$*) -c constraints/$*.txt)
	.venv-$*/bin/python -m pip install -e '.[dev]' -c constraints/$*.txt
	.venv-$*/bin/python -m pip check
	echo $* > $@

# A venv that borrows the main venv's torch needs the main venv first.
.venv-kaggle-2024/.installed: | $(VENV)/.installed

test: setup images
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Writes the synthetic folder only when DATA is the default; a real folder is never touched.
data: setup
ifeq ($(DATA),$(DEFAULT_DATA))
	@if [ -f $(DATA)/synth_meta.json ]; then echo "data: $(DATA) exists (rm -r it to regenerate)"; \
	else $(PY) -m lumbar synth --out $(DATA) --studies $(STUDIES) --test-studies $(TEST_STUDIES) --seed $(SEED); fi
else
	@echo "data: using $(DATA)"
endif

validate: setup
	$(PY) -m lumbar validate $(DATA)

WEIGHTS ?= weights
KERNEL ?= kernel
SUBMISSION ?= submission.csv

# Every stage (MODEL=all) with its configs/$(PRESET)/<stage>.json where there is one, then the run's
# artefacts into $(WEIGHTS) with manifest.json. PRESET=tiny: the CPU configs (tests, demo); PRESET=gpu: the
# real-data configs, which need CUDA (DEVICE=cpu runs them on the CPU on purpose); BACKBONES=folder: pretrained
# backbones offline (python -m lumbar backbones --out folder, on a machine with internet). MODEL=name trains one
# stage and takes ARGS="key=value ...". More GPUs: torchrun --nproc_per_node=N -m lumbar train --model
# multitask --run-dir $(RUN) --config configs/gpu/multitask.json ...
PRESET ?= tiny
PRESET_DIR ?= configs/$(PRESET)
DEVICE ?=
BACKBONES ?=
# The stages in the order the data flows (a test keeps this list equal to the trainers' registry).
STAGES := prior slice_select crops superres multitask sequence ensemble
TRAIN_STAGES := $(if $(filter all,$(MODEL)),$(STAGES),$(MODEL))
define train_stage
	$(PY) -m lumbar train --model $(1) --data $(DATA) --run $(RUN)$(if $(wildcard $(PRESET_DIR)/$(1).json), --config $(PRESET_DIR)/$(1).json)$(if $(DEVICE), --device $(DEVICE))$(if $(BACKBONES), --backbones $(BACKBONES))$(if $(filter all,$(MODEL)),, $(ARGS))

endef
train: data
	$(PY) -m lumbar preset $(PRESET_DIR)$(if $(DEVICE), --device $(DEVICE))
	$(foreach s,$(TRAIN_STAGES),$(call train_stage,$(s)))
	$(PY) -m lumbar export --run $(RUN) --data $(DATA) --out $(WEIGHTS)

export: setup
	$(PY) -m lumbar export --run $(RUN) --data $(DATA) --out $(WEIGHTS)

predict: setup
	$(PY) -m lumbar predict --data $(DATA) --weights $(WEIGHTS) --out $(SUBMISSION) $(ARGS)

# One offline notebook + kernel-metadata.json in $(KERNEL)/; upload: kaggle kernels push -p $(KERNEL).
# The weights dataset's id: DATASET=user/name, else $KAGGLE_USERNAME or ~/.kaggle/kaggle.json, else asked for.
DATASET ?=
# KAGGLE_DOCKER_IMAGE=gcr.io/kaggle-gpu-images/python@sha256:... pins the kernel to that image (docs/kaggle.md
# says how to read it off a kernel that ran); without it the kernel stays on the image its first run gets.
KAGGLE_DOCKER_IMAGE ?=
kernel: setup
	$(PY) build_kernel.py --weights $(WEIGHTS) --out $(KERNEL)$(if $(DATASET), --dataset $(DATASET))$(if $(KAGGLE_DOCKER_IMAGE), --docker-image $(KAGGLE_DOCKER_IMAGE))

# The multitask model's stage one: slice selector, then crops (both write into $(RUN)).
train-stage-one: data
	$(PY) -m lumbar train --model slice_select --data $(DATA) --run $(RUN)
	$(PY) -m lumbar train --model crops --data $(DATA) --run $(RUN)

# The newcomer's first hour: every stage on the synthetic folder (reusing what is built), the kernel run offline.
demo: data
	$(PY) -m lumbar demo --data $(DATA) --run $(RUN) --weights $(WEIGHTS) --kernel $(KERNEL)
	$(PY) -m lumbar score --data $(DATA) --run $(RUN) --reports $(REPORTS) --cache $(CACHE) >/dev/null

STUDY ?=
show: setup
	$(PY) -m lumbar show --data $(DATA) --run $(RUN) --study $(STUDY) --out reports/show_$(STUDY).png

# Every stage on a real-profile synthetic folder (512-640 px, angled axial blocks, missing tags): seconds and
# peak RSS per stage, cache size, projections to the real training set and a Kaggle run (docs/rehearsal.md).
REHEARSAL_STUDIES ?= 40
rehearsal: setup
	$(PY) -m lumbar rehearsal --out runs/rehearsal --studies $(REHEARSAL_STUDIES)

bench: setup
	$(PY) -m lumbar bench --data $(DATA) --run $(RUN) --weights $(WEIGHTS) --out reports/bench.md

# The learning curve (lumbar/curve.py): every stage on nested subsets of DATA's training studies, scored on
# CURVE_TEST's test studies, fitted and projected to 1,975 studies; resumed from runs/curve.
CURVE_SIZES ?= 25 50 100 200 400
CURVE_TEST ?= $(DATA)
curve: setup
	$(PY) -m lumbar curve --data $(DATA) --test $(CURVE_TEST) --sizes $(CURVE_SIZES) --work runs/curve --out bench/results/learning-curve

local-score: setup
	$(PY) -m lumbar score --data $(DATA) --run $(RUN) --reports $(REPORTS) --cache $(CACHE) --attribution

clean:
	rm -rf $(RUN) reports
