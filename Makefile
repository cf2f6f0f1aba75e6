# Two commands for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# `make test-beam`: the Beam engine's tests in .venv-beam (Apache Beam, no TensorFlow).
BEAM_VENV  := .venv-beam
BEAM_PY    := $(BEAM_VENV)/bin/python
BEAM_STAMP := $(BEAM_VENV)/.installed

.PHONY: demo test test-beam venv clean

venv: $(STAMP)

$(STAMP): setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

$(BEAM_STAMP): setup.py setup.cfg pyproject.toml scripts/beam_requirements.py
	$(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_PY) -m pip install --quiet --upgrade pip
	$(BEAM_PY) scripts/beam_requirements.py > $(BEAM_VENV)/requirements.txt
	$(BEAM_PY) -m pip install --quiet -r $(BEAM_VENV)/requirements.txt
	$(BEAM_PY) -m pip install --quiet --no-deps -e .
	touch $(BEAM_STAMP)

test-beam: $(BEAM_STAMP)
	$(BEAM_PY) -m pytest -q tests/test_build_beam.py tests/test_build_plan.py

demo: $(STAMP)
	bash scripts/demo.sh $(VENV)/bin

clean:
	rm -rf $(VENV) $(BEAM_VENV) demo
