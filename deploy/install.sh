#!/bin/sh
# Install healthsync from its wheel, with the PostgreSQL driver (the `postgres` extra), and check
# the command runs: the Dockerfile's install step. tests/packaging/test_deploy_install.py runs
# this same script into a clean virtualenv, so the image's install is tested where Docker cannot run.
#
#   sh deploy/install.sh WHEEL_DIR          (PYTHON: the interpreter to install into; default python3)
set -eu
wheel_dir=${1:?usage: install.sh WHEEL_DIR}
python=${PYTHON:-python3}
set -- "$wheel_dir"/healthsync-*.whl
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "install.sh: expected exactly one healthsync-*.whl in $wheel_dir" >&2
    exit 2
fi
"$python" -m pip install "$1[postgres]"
scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
"$scripts/healthsync" --version
"$python" -c 'import psycopg'
