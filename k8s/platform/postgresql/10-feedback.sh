#!/bin/bash
# Runs once, when the data directory is first initialised: the feedback role and one database per
# environment (the clinic endpoint creates its tables itself).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v pw="$FEEDBACK_PASSWORD" <<'SQL'
CREATE ROLE feedback LOGIN PASSWORD :'pw';
CREATE DATABASE feedback_staging OWNER feedback;
CREATE DATABASE feedback_production OWNER feedback;
SQL
