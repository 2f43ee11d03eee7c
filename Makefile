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

# The main job: the packaged default bundle classifies synthetic lesions generated now (no patient
# images are committed) and writes predictions.csv plus one HTML report per image.
run: $(STAMP)
	rm -rf runs/make-run
	$(VENV)/bin/skinlesion data synthetic --out runs/make-run/samples --lesions-per-class 1 --seed 11
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/skinlesion predict runs/make-run/samples/images \
	  --bundle default --out runs/make-run/predictions --report
	@echo "reports: runs/make-run/predictions/reports/ (synthetic lesions show the pipeline, not the model's accuracy: see the model card)"

test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
