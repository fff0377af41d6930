"""What the store tests share: small price files written on the fly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

HEADER = "Date,Open,High,Low,Close,Volume"


def rows_for(days: range, bump: float = 0.0) -> list[str]:
    base = dt.date(2020, 1, 1)
    out = []
    for i in days:
        p = 10 + i + bump
        out.append(f"{base + dt.timedelta(days=i)},{p},{p + 1},{p - 1},{p + 0.5},{1000 + i}")
    return out


def csv_file(folder: Path, name: str, rows: list[str], header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p
