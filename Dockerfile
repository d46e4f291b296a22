# healthsync's scheduler image: `docker compose up` (compose.yaml) runs it next to PostgreSQL.
#
# The build and install steps are the scripts in deploy/, which tests/packaging/test_deploy_install.py
# runs the same way in a clean virtualenv on every test run; the image itself is built and run
# (`healthsync --version`) by that test only where a Docker engine is available.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE CHANGELOG.md ./
COPY config ./config
COPY connectors ./connectors
COPY engine ./engine
COPY sync ./sync
COPY playbooks ./playbooks
COPY deploy/build-wheel.sh ./deploy/
RUN sh deploy/build-wheel.sh /dist

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
COPY deploy/install.sh /tmp/install.sh
COPY --from=wheel /dist /tmp/dist
RUN sh /tmp/install.sh /tmp/dist \
    && rm -rf /tmp/dist /tmp/install.sh \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/healthsync healthsync
# never root: the scheduler needs nothing but its own home (reports, logs) and the network
USER healthsync
WORKDIR /var/lib/healthsync
ENTRYPOINT ["healthsync"]
CMD ["schedule"]
