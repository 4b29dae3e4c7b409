# The README's two commands: `make demo` (set up, then run the main job) and `make test` (set up, then test).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= runs/demo

.PHONY: setup browser demo test lab pretrain bench classroom clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1 -e '.[notebooks,test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the browser tests (Playwright drives it; no browser is downloaded).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: setup
	$(VENV)/bin/clipood-kit demo --out $(OUT) --overwrite

# the venv and Debian's chromium are set up at once (pip unpacks from the local disk while apt downloads)
test:
	$(MAKE) -j2 setup browser
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -ra --durations=20

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# A class server in one command: the store every lesson reads (nothing trains in class), the student handouts and the
# app versions Voila serves. STORE may be any folder the students' kernels can read.
STORE ?= runs/classroom-store
classroom: setup
	$(VENV)/bin/clipood-kit lessons prepare --cache $(STORE) --workers 2
	$(VENV)/bin/clipood-kit lessons student --out runs/handout --overwrite
	$(VENV)/bin/clipood-kit lessons app --out runs/apps --overwrite

pretrain: setup
	$(VENV)/bin/clipood-kit pretrain

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
