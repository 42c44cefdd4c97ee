# PostgreSQL from Debian's packages, for `docker compose` on a machine that reaches no image registry (the real
# compose file runs pgvector's image). Without pgvector: the knowledge base takes its in-process path (make migrate
# and chat's /readyz say so). Listens on 127.0.0.1:$PGPORT (host networking: the machine's own server keeps 5432).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/*
COPY deploy/local/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
# Owned by postgres in the image: a new named volume mounted there takes that ownership.
RUN mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data PGPORT=25432
USER postgres
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
