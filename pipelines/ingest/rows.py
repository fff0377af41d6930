"""A file's rows as NumPy arrays that every step cuts and reorders together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Rows:
    date: np.ndarray  # int32 days since 1970 (garbage where date_null)
    date_null: np.ndarray
    codes: np.ndarray  # int32 ticker codes (-1 = null): the file's names, then the sorted tickers
    values: dict[str, np.ndarray]  # float64, NaN = missing
    rowidx: np.ndarray  # each row's data-row index in the file, for line numbers
    filled: np.ndarray  # rows whose missing values were forward-filled

    def __len__(self) -> int:
        return len(self.rowidx)

    def take(self, index: np.ndarray) -> None:
        """Keep (boolean mask) or reorder (indices) every array alike."""
        self.date = self.date[index]
        self.date_null = self.date_null[index]
        self.codes = self.codes[index]
        self.rowidx = self.rowidx[index]
        self.filled = self.filled[index]
        self.values = {k: v[index] for k, v in self.values.items()}
