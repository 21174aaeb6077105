#!/bin/sh
# Creates the MLflow and the Optuna database. The postgres image runs this once, from
# /docker-entrypoint-initdb.d, when its data volume is empty; after a change of names here,
# `docker compose down -v` (which deletes all tracked data) or create the database by hand.
# No `set -u`/`set -e`: if this file ever loses its executable bit the entrypoint sources it,
# and those options would then leak into the entrypoint's own shell.

: "${TRAINWISE_MLFLOW_DB:?set TRAINWISE_MLFLOW_DB in docker-compose.yml}"
: "${TRAINWISE_OPTUNA_DB:?set TRAINWISE_OPTUNA_DB in docker-compose.yml}"

# Two databases, never one: each tool migrates its own schema and neither expects the other's tables.
if [ "$TRAINWISE_MLFLOW_DB" = "$TRAINWISE_OPTUNA_DB" ]; then
    echo "init-databases.sh: MLflow and Optuna need different databases, both are '$TRAINWISE_MLFLOW_DB'" >&2
    exit 1
fi

for db in "$TRAINWISE_MLFLOW_DB" "$TRAINWISE_OPTUNA_DB"; do
    echo "init-databases.sh: creating database '$db' owned by '$POSTGRES_USER'"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";" || exit 1
done
