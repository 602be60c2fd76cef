# lumbar: make setup · test · data · train · local-score · predict · kernel · demo · bench
# The Kaggle image whose library versions the main venv trains and tests under (constraints/NAME.txt, with
# PYTHON_NAME and TORCH_NAME): kaggle-2026, the image a kernel pushed today runs on (Python 3.12, torch 2.10);
# kaggle-2024, the competition-period image (pin the kernel to it with KAGGLE_DOCKER_IMAGE, docs/kaggle.md).
# Weights load in either (their probes decide).
KAGGLE_IMAGE ?= kaggle-2026
CONSTRAINTS := constraints/$(KAGGLE_IMAGE).txt
PYTHON_kaggle-2026 ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
TORCH_kaggle-2026 ?= torch==2.10.0 torchvision==0.25.0
# The 2024 image had Python 3.10 and torch 2.4: nothing serialised depends on either (torch saves tensors), so
# it keeps this machine's Python and the 2026 torch; its pins that matter are numpy, scikit-learn and xgboost.
PYTHON_kaggle-2024 ?= python3
TORCH_kaggle-2024 ?= torch==2.10.0 torchvision==0.25.0
# kaggle-next, the image a first push meets once Kaggle moves its base (constraints/kaggle-next.txt): Python
# 3.13 and torch 2.11, whose PyPI wheel brings CUDA 13 libraries of its own (nothing to borrow: a full venv).
PYTHON_kaggle-next ?= $(firstword $(wildcard /root/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13))
TORCH_kaggle-next ?= torch==2.11.0 torchvision==0.26.0
PYTHON ?= $(PYTHON_$(KAGGLE_IMAGE))
TORCH_PKGS ?= $(TORCH_$(KAGGLE_IMAGE))
VENV ?= .venv
PY := $(VENV)/bin/python
# Disk (docs/kaggle.md): torch 2.10 with its CUDA libraries is 7 GB of a venv, and pip holds its 3.5 GB of
# wheels until it has installed them; pip keeps no cache. Each venv checks first that the disk has what it
# needs free, so that a full disk is named before pip half-installs.
NEED_GB ?= 12
NEED_GB_IMAGE ?= 5
export PIP_NO_CACHE_DIR := 1
IMAGES := kaggle-2026 kaggle-2024 kaggle-next
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

.PHONY: real-scale rehearsal demo setup images test test-fast data train export predict kernel train-stage-one local-score validate bench show clean curve

setup: $(VENV)/.installed

define need_disk
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ "$$free" -ge "$(2)" ] || \
	  { echo "setup: $(1) needs about $(2) GB free here, the disk has $$free GB (df -h .)"; exit 2; }
endef

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "setup: no Python for $(KAGGLE_IMAGE) (set PYTHON_$(KAGGLE_IMAGE)=/path/to/python)"; exit 2; }
	$(call need_disk,$(VENV),$(NEED_GB))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install $(TORCH_PKGS) -c $(CONSTRAINTS)
	$(PY) -m pip install -e '.[dev]' -c $(CONSTRAINTS)
	$(PY) -m pip check
	echo $(KAGGLE_IMAGE) > $@

# One venv per Kaggle image in IMAGES, for running the built kernel in it (the slow tests in tests/test_images.py).
# The main venv's image is the main venv itself (.venv-NAME links to it). Another image gets its own Python and
# pins; where its torch is the main venv's, it borrows the main venv's NVIDIA libraries (pure-Python wheels, the
# same for every Python) through a .pth, so their 3.9 GB are not written twice.
images: $(foreach i,$(IMAGES),.venv-$(i)/.installed)

define same_venv
	rm -rf .venv-$(1) && ln -s $(VENV) .venv-$(1)
endef
define own_venv
	@test -n "$(PYTHON_$(1))" || { echo "images: no Python for $(1) (set PYTHON_$(1)=/path/to/python)"; exit 2; }
	$(call need_disk,.venv-$(1),$(if $(call same_torch,$(1)),$(NEED_GB_IMAGE),$(NEED_GB)))
	$(PYTHON_$(1)) -m venv .venv-$(1)
	.venv-$(1)/bin/python -m pip install --upgrade pip >/dev/null
	$(if $(call same_torch,$(1)),$(call borrow_cuda,$(1)))
	.venv-$(1)/bin/python -m pip install $(TORCH_$(1)) -c constraints/$(1).txt
	.venv-$(1)/bin/python -m pip install -e '.[dev]' -c constraints/$(1).txt
	.venv-$(1)/bin/python -m pip check
endef
same_torch = $(if $(filter-out $(TORCH_PKGS),$(TORCH_$(1)))$(filter-out $(TORCH_$(1)),$(TORCH_PKGS)),,yes)
# pip counts the linked distributions as installed and never removes them: they lie outside its environment.
define borrow_cuda
	mkdir -p .venv-$(1)/borrowed
	ln -sfn $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")/nvidia* .venv-$(1)/borrowed/
	echo $(CURDIR)/.venv-$(1)/borrowed > $$(.venv-$(1)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/lumbar-borrowed.pth
endef

.venv-%/.installed: pyproject.toml constraints/%.txt | $(VENV)/.installed
	$(if $(filter $*,$(KAGGLE_IMAGE)),$(call same_venv,$*),$(call own_venv,$*))
	echo $* > $@

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
# A stage that finished for the same data, folds and overrides (after the stages before it) is reused: make
# train run again resumes where it stopped. RETRAIN=1 trains every stage again.
RETRAIN ?=
# FOLDS=N: study-level CV folds of every stage (default 5, RunConfig.n_folds; 2 halves the fits' cost and the
# ensemble's models)
FOLDS ?=
# The stages in the order the data flows (a test keeps this list equal to the trainers' registry).
STAGES := prior slice_select crops superres multitask sequence ensemble
TRAIN_STAGES := $(if $(filter all,$(MODEL)),$(STAGES),$(MODEL))
define train_stage
	$(PY) -m lumbar train --model $(1) --data $(DATA) --run $(RUN)$(if $(RETRAIN), --retrain)$(if $(FOLDS), --folds $(FOLDS))$(if $(wildcard $(PRESET_DIR)/$(1).json), --config $(PRESET_DIR)/$(1).json)$(if $(DEVICE), --device $(DEVICE))$(if $(BACKBONES), --backbones $(BACKBONES))$(if $(filter all,$(MODEL)),, $(ARGS))

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

# The competition's counts run end to end (bench/real_scale.py): 1,975 + 700 real-profile studies, make train,
# local-score, kernel, the notebook offline, every stage measured. Hours on a CPU: run it detached; the same
# command resumes it. Its folder is outside the clone, the code it trains pinned to the commit it started from.
REAL_SCALE_ROOT ?= $(abspath ../lumbar-real-scale)
real-scale: setup
	$(PY) bench/real_scale.py --root $(REAL_SCALE_ROOT) --venv $(abspath $(VENV)) $(ARGS)

local-score: setup
	$(PY) -m lumbar score --data $(DATA) --run $(RUN) --reports $(REPORTS) --cache $(CACHE) --attribution

clean:
	rm -rf $(RUN) reports
