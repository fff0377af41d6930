"""Hyperparameter search with Optuna: one study per ticker, trials scored on the validation part.

The search space of `tuning.space` becomes Optuna distributions (:mod:`.space`); each trial
trains one candidate on the training part and returns its validation RMSE in prices
(:mod:`.objective`, `lstm_core.search`), reporting every epoch's value to the pruner. The test
part is cut off before the study starts and never reaches a trial (:mod:`.study`). Trials run in
`tuning.workers` processes (:mod:`.workers`) that share the study through its storage (an Optuna
journal file by default, or a database URL: :mod:`.storage`), so a second `tune` with the same
study continues it, and only under the settings its trials were made under. Each trial is a nested MLflow run under one parent run per study and ticker
(all logging through `pipelines.tracking`).
"""

from pipelines.tuning.storage import load_study, storage_url
from pipelines.tuning.study import StudyResult, best_settings, check_study, run_study

__all__ = ["StudyResult", "best_settings", "check_study", "load_study", "run_study", "storage_url"]
