# kb_ros front door: `make demo` and `make test` set everything up on a fresh Debian/Ubuntu box
# with Python 3.11 (apt packages, a virtualenv with pinned deps), then run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned; on a machine without a local CPU wheel, add
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" to avoid the CUDA build.
TORCH_PIP_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUNTIME := python3-venv python3-dev gcc
APT_TEST := espeak-ng festival festvox-kallpc16k festvox-us-slt-hts

# The shipped models: synthesize the corpus, train (resuming from checkpoints/ when present),
# copy the best checkpoints into the package, then regenerate docs/RESULTS.md from the held-out
# test split. CPU by default; CUDA is used when present. The shipped device pair is the mixer
# family (`small` from small_fast, `kb` from kb_fast), within the device's compute budget; the
# paper's grid models (medium, small_gc and the boosted kb_d4, kb_gc) are trained for the table.
DATA ?= data/se
RUNS ?= checkpoints
TRAIN_MINUTES ?= 30
TRAIN_ARGS ?= --batch 8 --segment-s 1.0 --checkpoint-every 10 --max-minutes $(TRAIN_MINUTES)
SHIPPED := kb_ros/share/models
KB_ARGS = --large-model $(SHIPPED)/large $(TRAIN_ARGS) --val-every 150
SHIP := $(BIN)/python -m kb_ros.training.ship

.PHONY: demo test models results system-deps system-test-deps venv clean

demo: venv
	$(BIN)/kb-ros demo

test: venv system-test-deps
	$(BIN)/python -m pytest -q test

models: venv system-test-deps
	[ -f $(DATA)/train.npz ] || $(BIN)/kb-ros data --out $(DATA) --train 640 --val 96 --test 96
	[ -f $(DATA)/test.npz ] || $(BIN)/kb-ros data --out $(DATA) --train 0 --val 0 --test 96
	$(BIN)/kb-ros train large_cpu --data $(DATA) --out $(RUNS)/large_cpu $(TRAIN_ARGS) --val-every 100
	$(SHIP) $(RUNS)/large_cpu large
	$(BIN)/kb-ros train small_fast --data $(DATA) --out $(RUNS)/small_fast $(TRAIN_ARGS) \
		--val-every 250
	$(SHIP) $(RUNS)/small_fast small --data $(DATA)
	$(BIN)/kb-ros train kb_fast --data $(DATA) --out $(RUNS)/kb_fast --init-from $(SHIPPED)/small \
		$(KB_ARGS)
	$(SHIP) $(RUNS)/kb_fast kb --data $(DATA)
	for preset in medium small_gc; do \
		$(BIN)/kb-ros train $$preset --data $(DATA) --out $(RUNS)/$$preset $(TRAIN_ARGS) \
			--val-every 150 && $(SHIP) $(RUNS)/$$preset $$preset --data $(DATA) || exit 1; done
	$(BIN)/kb-ros train kb_d4 --data $(DATA) --out $(RUNS)/kb_d4 --init-from $(SHIPPED)/small \
		$(KB_ARGS)
	$(SHIP) $(RUNS)/kb_d4 kb_d4 --data $(DATA)
	$(BIN)/kb-ros train kb_gc --data $(DATA) --out $(RUNS)/kb_gc --init-from $(SHIPPED)/small_gc \
		$(KB_ARGS)
	$(SHIP) $(RUNS)/kb_gc kb_gc --data $(DATA)
	$(MAKE) results

results: venv
	$(BIN)/kb-ros eval --table --data $(DATA) --out docs/RESULTS.md

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

system-deps:
	@missing=$$(for p in $(APT_RUNTIME); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; fi

system-test-deps:
	@missing=$$(for p in $(APT_TEST); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; fi

clean:
	rm -rf $(VENV) build *.egg-info
