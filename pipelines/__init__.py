"""Prefect flows and tasks, the MLflow glue, the configuration file and the CLI."""
