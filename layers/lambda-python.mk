# What every `sam build` Makefile of this project shares (layers/metering/Makefile and
# functions/build.mk include it): CPython 3.12, Lambda wheels, bytecode compiled at build time.
#
# SAM runs `make --makefile <the CodeUri's Makefile> build-<logical id>` in a scratch copy of the
# CodeUri folder; the Makefile itself is read from the source tree, so an include relative to it
# (`$(dir $(lastword $(MAKEFILE_LIST)))`) finds this file.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# CPython 3.12, the runtime's interpreter: the magic number of a .pyc must match the interpreter
# that loads it, or the .pyc is ignored and the source compiled again. A python3.12 on PATH must
# also answer (a pyenv shim without 3.12 selected does not); then pyenv's 3.12 installs.
# Override with PYTHON312=/path/to/python3.12.
IS_CPYTHON312 := import sys; sys.exit(sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 12))
ifeq ($(strip $(PYTHON312)),)
override PYTHON312 := $(firstword $(foreach py,\
  $(shell command -v python3.12 2>/dev/null) \
  $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.12*/bin/python3.12) \
  $(wildcard /usr/local/bin/python3.12 /usr/bin/python3.12),\
  $(if $(shell '$(py)' -c '$(IS_CPYTHON312)' >/dev/null 2>&1 && echo ok),$(py))))
endif

# Wheels for Lambda (x86_64, CPython 3.12) whatever the local interpreter and OS: never an sdist
# built here. No .pyc from pip: compileall below writes them all, in one mode.
PIP_INSTALL = '$(PYTHON312)' -m pip install --quiet --disable-pip-version-check --no-input --no-compile \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.12 --only-binary=:all:

# unchecked-hash: the .pyc records a hash of its source and Python never checks it against the
# source. The default (timestamp) .pyc records the source's mtime and size, and Python recompiles
# whenever they differ from the file's; the mtimes Lambda gives the files it extracts from the zip
# are not something to rely on, and a mismatch would silently mean compiling at every cold start.
# The artifact is immutable, so there is nothing to check. -f: rewrite any .pyc already there.
COMPILE = '$(PYTHON312)' -m compileall -q -f -j 0 --invalidation-mode unchecked-hash

# Fails the build unless $(PYTHON312) is CPython 3.12 and $(ARTIFACTS_DIR) is set.
define check_build
	$(if $(ARTIFACTS_DIR),,$(error ARTIFACTS_DIR is not set: this target is run by `sam build`))
	@test -n '$(PYTHON312)' || { echo "CPython 3.12 not found: put python3.12 on PATH, install it with pyenv, or set PYTHON312" >&2; exit 1; }
	@'$(PYTHON312)' -c '$(IS_CPYTHON312)' || { echo "$(PYTHON312) is not CPython 3.12 (the Lambda runtime's interpreter)" >&2; exit 1; }
endef
