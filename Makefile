# make demo: train the toy class-conditional model on the embedded dataset, sample a grid.
# make test: the whole CPU test suite.
# make lint: ruff's linter and formatter check over the tree.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
CONSTRAINTS := -c requirements/constraints-cpu.txt
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml requirements/constraints-cpu.txt requirements/extras-nodeps.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(CONSTRAINTS) torch==2.13.0 torchvision==0.28.0
	$(PIP) install $(CONSTRAINTS) -e ".[test]"
	$(PIP) install --no-deps -r requirements/extras-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	$(PY) scripts/demo/toy_demo.py

clean:
	rm -rf $(VENV) build dist *.egg-info

# make gpu-prepare: the wheels a GPU run needs on the lent machines' bare image (.gpu-wheels).
# make gpu-smoke: gpu.sh --cpu-smoke in a venv holding only the image's packages + those wheels.
.PHONY: gpu-prepare gpu-smoke
gpu-prepare: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu.sh --prepare

gpu-smoke: gpu-prepare
	rm -rf .gpu-smoke
	$(PY) benchmarks/image_env.py .gpu-smoke/env
	PYTHON=.gpu-smoke/env/bin/python bash benchmarks/gpu.sh --cpu-smoke .gpu-smoke/results
