# bksdm-edge: `make run` = set up + main job on the built-in default; `make test` = set up + tests.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
EXTRAS  = onnx,tflite,coreml,openvino,bench,train,quality,test
OUT    ?= out

export HF_HUB_OFFLINE = 1
export TF_CPP_MIN_LOG_LEVEL = 2

.PHONY: setup run test test-slow test-interop android-test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c .ci/constraints.txt torch==2.13.0
	$(PIP) install -q -c .ci/constraints.txt -e ".[$(EXTRAS)]"
	# CLIP's BPE vocabulary ships in open-clip-torch; its own dependencies would pull torchvision.
	$(PIP) install -q --no-deps open-clip-torch==3.3.0
	touch $@

run: setup
	$(PY) -m bksdm_edge.main_job --out $(OUT)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# Our bundles in the real tools (optimum-onnx in its own venv, created once under ~/.cache/bksdm-edge/venvs).
test-interop: setup
	$(PY) -m pytest -q -m interop

android-test:
	bash android_demo/engine/test.sh

clean:
	rm -rf $(OUT) .pytest_cache
