"""Pure computation for LSTM price forecasting: no Prefect, no MLflow, no config files."""
