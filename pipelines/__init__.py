"""Prefect flows and tasks, the MLflow glue, the configuration file and the CLI."""

DISTRIBUTION = "lstm-stock-pipeline"  # this project's name in pyproject.toml (for its version)
