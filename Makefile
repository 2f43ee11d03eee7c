# Two set-up commands: `make run` (main job) and `make test` (whole test suite).
# Both create .venv from nothing (needs only python3 >= 3.10 and pip's package index).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the packaged default bundle classifies the 16 real HAM10000 sample lesions shipped
# with the package (test split, CC BY-NC 4.0; src/skinlesion/samples/ham10000/README.md), writes
# predictions.csv plus one HTML report per image, and prints truth beside diagnosis, flags and review.
run: $(STAMP)
	rm -rf runs/make-run
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/skinlesion predict "$$($(PY) -m skinlesion.samples --csv)" \
	  --bundle default --out runs/make-run/predictions --report
	$(PY) -m skinlesion.samples runs/make-run/predictions

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
