"""MLflow pyfunc model "from code": recent daily prices in, forecast prices out.

MLflow copies this file into the logged model and runs it at load time; the fitted
scaler, window configuration and the `.keras` network travel as the `forecaster`
artifact, and `lstm_core` travels as a code path, so any MLflow client can load it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class LSTMPriceModel(mlflow.pyfunc.PythonModel):
    """Input: >= lookback rows with `date` and the feature columns. Output: `date` (trading
    days as datetime.date) and prices.

    The signature names exactly those columns; other columns are ignored (lstm_core's
    `model_input` selects, orders and coerces them).
    """

    def load_context(self, context) -> None:
        from lstm_core.predictor import Forecaster

        self.forecaster = Forecaster.load(context.artifacts["forecaster"])

    # The hint tells MLflow a DataFrame comes in; the logged signature describes its columns.
    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from lstm_core.data import DATE_COLUMN, DataError

        # A param sent as null (JSON `null`, Python None) means its default. MLflow drops a param
        # the signature does not name before this sees it (a warning in the server's log only),
        # so an unknown one cannot be refused here: the README lists those the model takes.
        params = {k: v for k, v in (params or {}).items() if v is not None}
        frame = pd.DataFrame(model_input)
        days = int(params.get("days", 1))
        intervals = bool(params.get("intervals", False))
        forecaster = self.forecaster
        try:
            forecaster.check_days(days)  # before recalibrating: nothing computed
            if intervals and bool(params.get("recalibrate", False)):
                # conformal scores of the input's days after the calibration: a rolling window
                forecaster = forecaster.recalibrated(frame)
            out = forecaster.forecast(frame, days=days, intervals=intervals)
        except DataError as exc:
            # `mlflow models serve` answers an MlflowException with its message; any other
            # error only with "an unexpected error while evaluating the model".
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        # a trading day is a date: datetime.date, which the scoring server writes as YYYY-MM-DD
        # (a Timestamp, whatever its unit, as YYYY-MM-DDT00:00:00)
        return out.assign(**{DATE_COLUMN: out[DATE_COLUMN].dt.date})


set_model(LSTMPriceModel())
