# `sam build` of the function(s) whose CodeUri is this folder (template.yaml: Metadata
# BuildMethod: makefile), included by every functions/<name>/Makefile (tests/infra checks it).
#
# SAM copies this folder to a scratch directory, runs `make --makefile <this file>
# build-<logical id>` there, and zips whatever the target leaves in $(ARTIFACTS_DIR): Lambda's
# /var/task. A pattern rule, because functions/record/ serves two functions (RecordFunction and
# RecordQueueFunction), each built on its own. By hand, from the function's folder:
#   make build-CheckFunction ARTIFACTS_DIR=/tmp/check
#
# What a function holds: its *.py, the distributions of its requirements.txt (pinned, installed
# with --no-deps: anything else comes from the layer), and their bytecode, compiled here, at build
# time (layers/lambda-python.mk says why, and why unchecked-hash).

include $(dir $(lastword $(MAKEFILE_LIST)))../layers/lambda-python.mk

# requirements.txt may hold nothing but comments (pip refuses a file without a requirement).
build-%:
	$(check_build)
	mkdir -p '$(ARTIFACTS_DIR)'
	if [ -f requirements.txt ] && grep -Eqv '^[[:space:]]*(#|$$)' requirements.txt; then \
	  $(PIP_INSTALL) --no-deps --target '$(ARTIFACTS_DIR)' -r requirements.txt; fi
	cp *.py '$(ARTIFACTS_DIR)/'
	rm -rf '$(ARTIFACTS_DIR)/bin'
	find '$(ARTIFACTS_DIR)' -depth -type d -name __pycache__ -exec rm -rf {} +
	$(COMPILE) '$(ARTIFACTS_DIR)'
