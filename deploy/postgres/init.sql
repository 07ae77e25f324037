-- Run once by the official postgres image, when its volume is empty
-- (/docker-entrypoint-initdb.d): a database per service, so that no service reads another's
-- tables. Each service creates its own tables at start (versioned migrations under an advisory
-- lock, docs/operations.md "PostgreSQL"). The names match DATABASE_URL in compose.postgres.yaml
-- and `scripts/run.sh` (DATABASE=postgres).
CREATE DATABASE orders;
CREATE DATABASE products;
CREATE DATABASE webhooks;
