# The image production runs the flows from (see README, "Deploying"): a slim Python with one
# virtual environment holding the locked runtime dependencies, and the code in /opt/pyflow.
#
#   docker build --secret id=ca,src=CA_BUNDLE --build-arg PIP_INDEX_URL=URL -t pyflow .
#
# Both options are for builds behind a proxy or private index, and neither reaches the final
# image: the CA bundle is a build secret, mounted only while packages install, and the index
# URL is a build argument of the build stage alone. Without them the default index is used.
# The Kubernetes worker runs `prefect flow-run execute` as the container's args: there is no
# ENTRYPOINT. A deployment's entrypoint is pyflow_kit.flows:FLOW, which finds the flow in the
# project at PYFLOW_PROJECT. The default command runs the project's default flow once.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- spec: the parts of pyproject.toml that installing reads ------------------------------
# Only [project], [tool.poetry], [tool.pyflow], [build-system] and [dependency-groups] are
# kept, so editing tool settings ([tool.ruff], [tool.pytest...]) leaves the dependency layers
# cached. If the trimmed file does not parse to exactly those tables, the whole file is used.
FROM ${BASE_IMAGE} AS spec
WORKDIR /spec
COPY pyproject.toml poetry.lock /src/
RUN cp /src/poetry.lock . \
    && awk '/^\[/ { keep = ($0 ~ /^\[\[?(project|build-system|dependency-groups|tool\.poetry|tool\.pyflow)([].]|$)/) } keep' \
        /src/pyproject.toml > pyproject.toml \
    && python3 -c 'import sys, tomllib; \
full, kept = (tomllib.load(open(path, "rb")) for path in sys.argv[1:]); \
tool = {key: value for key, value in full.get("tool", {}).items() if key in ("poetry", "pyflow")} or None; \
want = {key: value for key, value in full.items() if key != "tool"} | ({"tool": tool} if tool else {}); \
sys.exit(kept != want)' /src/pyproject.toml pyproject.toml \
    || cp /src/pyproject.toml pyproject.toml

# --- build: install the locked runtime dependencies into /opt/venv with Poetry -------------
FROM ${BASE_IMAGE} AS build

ARG PIP_INDEX_URL=""
ARG POETRY_SPEC="poetry==2.5.1"
ARG POETRY_MIRROR_PLUGIN_SPEC="poetry-plugin-pypi-mirror==0.6.5"

# The secret, when given, is trusted only inside a RUN that mounts it; an empty PIP_INDEX_URL
# falls back to pip's default index, which Poetry then reads through the mirror plugin (pip's
# simple API, since some indexes do not serve Poetry's JSON API).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_CREATE=false \
    POETRY_CACHE_DIR=/tmp/poetry-cache \
    VIRTUAL_ENV=/opt/venv

RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then \
        export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; \
    fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    python3 -m venv /opt/poetry; \
    /opt/poetry/bin/pip install --quiet "$POETRY_SPEC" "$POETRY_MIRROR_PLUGIN_SPEC"

WORKDIR /opt/pyflow
COPY --from=spec /spec/ ./
# <template-only>
# pyflow-kit, which this repository holds beside the project (a project made from it takes a
# version instead, and has no kit/): installed editable like the project, from a stand-in for
# its package, so that a change to its code does not reinstall the dependencies.
COPY kit/pyproject.toml kit/README.md kit/
RUN mkdir -p kit/src/pyflow_kit && : > kit/src/pyflow_kit/__init__.py
# </template-only>

# Only poetry.lock and the install-relevant part of pyproject.toml reach this layer, so a code
# change does not reinstall the dependencies. The project itself is installed editable (a .pth
# file naming /opt/pyflow, its metadata and the `pyflow` script): stand-ins for its package and
# README are enough for that, and the final stage copies the real code to the same place.
# (Poetry's --compile reports a SyntaxError for whenever/_typing_312.py, a file for Python 3.12
# that 3.11 never imports: harmless.)
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then \
        export PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; \
    fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    POETRY_PYPI_MIRROR_URL="${PIP_INDEX_URL:-$(/opt/poetry/bin/python -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}"; \
    export POETRY_PYPI_MIRROR_URL; \
    python3 -m venv --without-pip "$VIRTUAL_ENV"; \
    export PATH="$VIRTUAL_ENV/bin:$PATH"; \
    /opt/poetry/bin/poetry install --only main --no-root --compile; \
    mkdir pyflow; : > pyflow/__init__.py; : > README.md; \
    /opt/poetry/bin/poetry install --only-root; \
    rm -rf pyflow README.md "$POETRY_CACHE_DIR"

# --- final: the virtual environment and the code, run as an unprivileged user ---------------
FROM ${BASE_IMAGE}

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/pyflow \
    PREFECT_HOME=/home/pyflow/.prefect \
    PYFLOW_PROJECT=/opt/pyflow \
    PYTHONUNBUFFERED=1

# A fixed, numeric UID and GID, so that Kubernetes' runAsNonRoot can check them; the user may
# write to its home (Prefect's state) and to data/ (the default output folder), not the code.
RUN groupadd --gid 1000 pyflow \
    && useradd --uid 1000 --gid 1000 --no-log-init --create-home --home-dir /home/pyflow \
        --shell /usr/sbin/nologin pyflow \
    && mkdir -p /opt/pyflow/data \
    && chown 1000:1000 /opt/pyflow/data

COPY --from=build /opt/venv /opt/venv

WORKDIR /opt/pyflow
COPY --from=spec /spec/pyproject.toml ./
COPY prefect.toml ./
# <template-only>
COPY kit/src/ ./kit/src/
# </template-only>
COPY pyflow/ ./pyflow/
RUN python -m compileall -q pyflow kit/src  # template-only
# project-only: RUN python -m compileall -q pyflow

USER 1000:1000
CMD ["python", "-m", "pyflow"]
