#!/bin/sh
# Entry point of the broker container: fill the users' passwords from the environment (.env) into
# the definitions file, then start RabbitMQ as the image normally does.
set -eu

template=${DEFINITIONS_TEMPLATE:-/etc/rabbitmq/modelwatch/definitions.json}
target=${DEFINITIONS_TARGET:-/var/lib/rabbitmq/modelwatch-definitions.json}
variables="FEATURES_BROKER_PASSWORD MODEL_BROKER_PASSWORD METRIC_BROKER_PASSWORD MONITOR_BROKER_PASSWORD DASHBOARD_BROKER_PASSWORD RABBITMQ_ADMIN_PASSWORD"

script=""
for name in $variables; do
  value=$(printenv "$name" || true)
  case "$value" in
    "" | *[!A-Za-z0-9_-]*)
      echo "render-definitions: $name must be set in .env (letters, digits, _ and - only)" >&2
      exit 1
      ;;
  esac
  script="${script}s/\${${name}}/${value}/g;"
done

mkdir -p "$(dirname "$target")"
(umask 077 && sed -e "$script" "$template" > "$target")
if [ "$(id -u)" = 0 ]; then
  chown rabbitmq:rabbitmq "$target"
fi
exec docker-entrypoint.sh "$@"
