# One image for the three services: `python -m services.<auth|chat|conversations>`.
# Build stage: the dependencies from requirements.lock (every version pinned, every file checked against its
# sha256), into a virtual environment. Final stage: that environment and the services' code only (no devtools,
# no tests, no compiler), run by an unprivileged user.
# BASE_IMAGE: the official pinned image; a machine without access to an image registry passes a base of its own
# made from Debian's packages (tests/test_docker.py: debootstrap, then docker import).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# bonsai (the directory login's LDAP client) is built against OpenLDAP's libldap (and Python's headers, which
# the official image has and a base made from Debian's packages does not).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libldap2-dev libsasl2-dev \
    && (python -c "import os, sysconfig; assert os.path.exists(sysconfig.get_paths()['include'] + '/Python.h')" \
        || apt-get install -y --no-install-recommends python3-dev) \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /venv
COPY requirements.lock /tmp/requirements.lock
RUN /venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock

FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/venv/bin:$PATH
COPY --from=build /venv /venv
WORKDIR /app
COPY shared ./shared
COPY services ./services
COPY db ./db
COPY docs/openapi.json ./docs/openapi.json
RUN useradd --system --uid 10001 --no-create-home wibot
USER wibot
EXPOSE 8001 8002 8003
# The probe follows the service the container runs: the port of its command line (shared/probe.py).
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD ["python", "-m", "shared.probe"]
CMD ["python", "-m", "services.auth", "--host", "0.0.0.0", "--port", "8001"]
