#!/bin/sh
# The official image's template step: every /etc/nginx/templates/X.template becomes /etc/nginx/conf.d/X with the
# environment's variables substituted (only those defined: nginx's own $variables stay), then nginx in the
# foreground with a main configuration of its own (errors to stderr).
set -eu
defined=$(env | cut -d= -f1 | sed 's/^/$/' | tr '\n' ' ')
for template in /etc/nginx/templates/*.template; do
  envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$(basename "$template" .template)"
done
cat > /etc/nginx/nginx.conf <<'CONF'
worker_processes auto;
error_log stderr warn;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    include /etc/nginx/conf.d/*.conf;
}
CONF
exec nginx -g 'daemon off;'
