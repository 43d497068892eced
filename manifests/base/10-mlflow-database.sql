-- Runs once, when PostgreSQL initialises an empty data directory: the official image has already
-- created POSTGRES_DB (the Optuna database); MLflow gets its own database (both keep an alembic_version
-- table, so they cannot share one).
CREATE DATABASE "mlflow";
