#!/bin/sh
# Build healthsync's wheel from the source tree in the current directory: the first step of the
# Dockerfile. tests/packaging/test_deploy_install.py runs this same script, so the image's build
# steps are tested even where Docker cannot run.
#
#   sh deploy/build-wheel.sh OUT_DIR        (PYTHON: the interpreter whose pip builds; default python3)
set -eu
out=${1:?usage: build-wheel.sh OUT_DIR}
python=${PYTHON:-python3}
# setuptools' scratch folder would carry files deleted from the source into the wheel
rm -rf build
"$python" -m pip wheel --no-deps --wheel-dir "$out" .
