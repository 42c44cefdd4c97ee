# nginx from Debian's packages, for `docker compose` on a machine that reaches no image registry (the real compose
# file runs nginx's image). Renders /etc/nginx/templates/*.template with envsubst at start, as that image does.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light gettext-base curl \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
COPY deploy/local/nginx-entrypoint.sh /usr/local/bin/nginx-entrypoint.sh
CMD ["sh", "/usr/local/bin/nginx-entrypoint.sh"]
