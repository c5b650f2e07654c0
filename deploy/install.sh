#!/bin/sh
# Install engram with the gateway into a virtual environment at PREFIX, from the
# pinned, hashed deploy lock: the container image's install step, and the one a
# tested run of it performs outside a container (tests/test_deploy.py).
#   sh deploy/install.sh /opt/engram      (run from the source tree)
set -eu
prefix=${1:?usage: deploy/install.sh PREFIX}
python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-hashes -r deploy/requirements.lock
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation .
install -m 0755 deploy/entrypoint.sh "$prefix/bin/engram-container"
