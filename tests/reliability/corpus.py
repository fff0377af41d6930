"""The hostile-input corpus: every case is one invocation of the real CLI that must fail cleanly.

Each :class:`Case` names the files it writes into an ``inputs/`` folder of a trained project
copy, the CLI arguments, and the text the single ``error:`` line must contain. The files are
generated here (no binary blobs in the repository); :func:`materialize` writes them.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.pipelines.conftest import trading_days

HEADER = "Date,Open,High,Low,Close,Volume"


def good_rows(n: int = 30, start: str = "2021-01-04", price: float = 50.0) -> list[str]:
    """n valid Yahoo-layout rows (New York trading days), a gentle deterministic walk."""
    rng = np.random.default_rng(7)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    rows = []
    for d, c in zip(trading_days(start, n), close, strict=True):
        o = c * 1.001
        rows.append(f"{d},{o:.4f},{max(o, c) * 1.01:.4f},{min(o, c) * 0.99:.4f},{c:.4f},1000")
    return rows


def csv_text(rows: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def with_row(i: int, row: str, n: int = 30) -> bytes:
    """A valid file whose data row ``i`` (0-based; line i + 2) is replaced by ``row``."""
    rows = good_rows(n)
    rows[i] = row
    return csv_text(rows)


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"Date": ["2021-01-04"], "Close": [1.0]}), buf)
    return buf.getvalue()


def _split(factor: float) -> bytes:
    rows = good_rows(30)
    out = []
    for i, r in enumerate(rows):
        d, *vals = r.split(",")
        if i >= 15:
            vals = [f"{float(v) * factor:.4f}" for v in vals[:4]] + [vals[4]]
        out.append(",".join([d, *vals]))
    return csv_text(out)


def _conflicting_test_file() -> bytes:
    """The stored TEST series (see STORED_TEST_ROWS) with one open price changed."""
    from tests.pipelines.conftest import price_frame

    frame = price_frame(STORED_TEST_ROWS)
    frame.loc[10, "Open"] = frame.loc[10, "Open"] + 0.5
    frame.loc[10, "High"] = max(frame.loc[10, "High"], frame.loc[10, "Open"])
    return frame.to_csv(index=False).encode()


STORED_TEST_ROWS = 120


def _constant(n: int) -> bytes:
    rows = [f"{d},10,10,10,10,1000" for d in trading_days("2021-01-04", n)]
    return csv_text(rows)


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, bytes | Callable[[], bytes]]
    args: tuple[str, ...]  # "{inputs}" is replaced by the inputs folder; the config is appended
    needle: str  # the error line must contain this (case-insensitive)
    where: str  # ... and this: the file, key or option it names
    command: str = "ingest"
    config: str | None = None  # extra YAML appended to the tiny config (None: unchanged)
    raw_config: str | None = None  # a whole config file instead
    sets: tuple[str, ...] = field(default=())

    def materialize(self, inputs: Path) -> None:
        inputs.mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            data = content() if callable(content) else content
            (inputs / name).write_bytes(data)


def _i(name: str, content: bytes | Callable[[], bytes], needle: str, *extra: str, **kw) -> Case:
    cid = kw.pop("id")
    where = kw.pop("where", name)
    return Case(cid, {name: content}, ("{inputs}/" + name, *extra), needle, where, **kw)


GOOD = csv_text(good_rows(30))

CASES: list[Case] = [
    # ---- the ingestion validation cases
    _i("EMPTY.csv", b"", "empty", id="empty_file"),
    _i("BLANK.csv", b"\n  \n\r\n", "empty", id="blank_lines_only"),
    _i("HDR.csv", csv_text([]), "header only", id="header_only"),
    _i("HDRCRLF.csv", b"Date,Open,High,Low,Close\r\n\r\n", "header only", id="header_only_crlf"),
    _i(
        "UNDEC.csv",
        csv_text(good_rows(5)) + b"2021-02-01,1\xff\xfe,2,0.5,1,10\n",
        "undecodable",
        id="undecodable_bytes",
    ),
    _i(
        "NODATE.csv",
        csv_text(["10,11,9,10"], header="Open,High,Low,Close"),
        "missing date",
        id="missing_date_column",
    ),
    _i(
        "NOCLOSE.csv",
        csv_text(["2021-01-04,10,11,9"], header="Date,Open,High,Low"),
        "missing close",
        id="missing_close_column",
    ),
    _i(
        "NOOPEN.csv",
        csv_text(["2021-01-04,11,9,10"], header="Date,High,Low,Close"),
        "missing open",
        id="missing_open_column",
    ),
    _i(
        "BADDATE.csv",
        with_row(3, "someday,10,11,9,10,1000"),
        "unparseable date",
        id="unparseable_date",
    ),
    _i(
        "FIRSTDATE.csv",
        with_row(0, "yesterday,10,11,9,10,1000"),
        "unparseable date",
        id="unparseable_first_date",
    ),
    _i(
        "FEB30.csv",
        with_row(2, "2021-02-30,10,11,9,10,1000"),
        "invalid date",
        id="impossible_calendar_date",
    ),
    _i(
        "MIXED.csv",
        with_row(4, "1/11/2021,10,11,9,10,1000"),
        "mixed date formats",
        id="mixed_date_formats",
    ),
    _i(
        "FUTURE.csv",
        csv_text([*good_rows(5), "2999-01-04,10,11,9,10,1000"]),
        "future",
        id="date_far_in_future",
    ),
    _i(
        "DUP.csv",
        csv_text([*good_rows(5), good_rows(5)[2].replace(",1000", ",2000")]),
        "duplicate date",
        id="duplicate_dates_different_values",
    ),
    _i("NONNUM.csv", with_row(5, "2021-01-11,abc,11,9,10,1000"), "non-numeric", id="non_numeric"),
    _i("INF.csv", with_row(5, "2021-01-11,10,inf,9,10,1000"), "non-finite", id="non_finite_inf"),
    _i(
        "NEGINF.csv",
        with_row(5, "2021-01-11,10,11,-inf,10,1000"),
        "non-finite",
        id="non_finite_neg_inf",
    ),
    _i("NAN.csv", with_row(5, "2021-01-11,10,11,9,NaN,1000"), "missing", id="nan_value"),
    _i("ZERO.csv", with_row(6, "2021-01-12,0,11,0,10,1000"), "positive", id="zero_price"),
    _i("NEG.csv", with_row(6, "2021-01-12,-10,11,-11,10,1000"), "positive", id="negative_price"),
    _i("HILO.csv", with_row(7, "2021-01-13,10,9,11,10,1000"), "below low", id="high_below_low"),
    _i("OUTSIDE.csv", with_row(7, "2021-01-13,12,11,9,10,1000"), "outside", id="open_above_high"),
    _i("MISSING.csv", with_row(8, "2021-01-14,10,,9,10,1000"), "missing high", id="missing_value"),
    _i("MISSDATE.csv", with_row(8, ",10,11,9,10,1000"), "missing date", id="missing_date_value"),
    _i("NEGVOL.csv", with_row(8, "2021-01-14,10,11,9,10,-5"), "negative", id="negative_volume"),
    # ---- not CSV at all
    _i("BIN.csv", bytes(range(256)) * 4, "binary", id="binary_file"),
    _i("PARQ.csv", _parquet_bytes, "parquet", id="parquet_renamed_csv"),
    _i("ZIP.csv", b"PK\x03\x04" + b"\x00" * 60, "zip", id="zip_renamed_csv"),
    _i("GZ.csv", lambda: gzip.compress(GOOD), "gzip", id="gzip_renamed_csv"),
    _i("DIR.csv", b"", "file not found", id="missing_file"),  # path replaced below
    # ---- broken structure
    _i("TRUNC.csv", GOOD + b"2021-02-15,10.1,10.", "expected 6 fields", id="truncated_last_line"),
    _i(
        "EXTRA.csv",
        with_row(9, "2021-01-15,10,11,9,10,1000,7,8"),
        "fields",
        id="extra_fields_mid_file",
    ),
    _i("QUOTE.csv", with_row(9, '2021-01-15,"10,11,9,10,1000'), "csv", id="unterminated_quote"),
    # ---- names that could escape the store
    _i(
        "GOOD1.csv",
        GOOD,
        "invalid ticker",
        "--ticker",
        "../x",
        where="--ticker",
        id="ticker_dotdot_option",
    ),
    _i(
        "GOOD2.csv",
        GOOD,
        "invalid ticker",
        "--ticker",
        "a/b",
        where="--ticker",
        id="ticker_slash_option",
    ),
    _i(
        "GOOD3.csv",
        GOOD,
        "invalid ticker",
        "--ticker",
        "..",
        where="--ticker",
        id="ticker_is_dotdot",
    ),
    _i(
        "GOOD4.csv",
        GOOD,
        "invalid ticker",
        "--ticker",
        "X" * 65,
        where="--ticker",
        id="ticker_too_long",
    ),
    _i(
        "TCOL.csv",
        csv_text([f"../../etc,{r}" for r in good_rows(5)], header="ticker," + HEADER),
        "invalid ticker",
        id="ticker_column_traversal",
    ),
    _i("x..y.csv", GOOD, "invalid ticker", id="file_stem_dotdot"),
    # ---- against the stored rows / plausibility
    _i(
        "TEST.csv",
        lambda: _conflicting_test_file(),
        "differs from the stored value",
        id="conflict_with_store",
    ),
    _i("SPLIT.csv", lambda: _split(0.5), "split", id="split_sized_drop"),
    _i("RSPLIT.csv", lambda: _split(3.0), "split", id="reverse_split_sized_rise"),
    # ---- configuration
    Case(
        "config_unknown_top_key",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "unknown key bogus",
        "mlflow.yaml",
        config="bogus: {a: 1}\n",
    ),
    Case(
        "config_unknown_nested_key",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "training.epochz",
        "mlflow.yaml",
        raw_config="training:\n  epochz: 3\n",
    ),
    Case(
        "config_wrong_type",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "training.epochs",
        "mlflow.yaml",
        raw_config="training:\n  epochs: many\n",
    ),
    Case(
        "config_invalid_yaml",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "not valid yaml",
        "mlflow.yaml",
        raw_config="training: [epochs: 3\n",
    ),
    Case(
        "config_not_a_mapping",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "mapping",
        "mlflow.yaml",
        raw_config="- a\n- b\n",
    ),
    Case(
        "config_bad_override",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "features.lookback",
        "--set features.lookback=-3",
        sets=("features.lookback=-3",),
    ),
    Case(
        "config_missing_file",
        {"G.csv": GOOD},
        ("{inputs}/G.csv",),
        "not found",
        "nope.yaml",
        raw_config="@missing",
    ),
    # ---- training-time cases: `run` must refuse before anything is stored or logged
    Case(
        "run_lookback_longer_than_data",
        {"LB.csv": csv_text(good_rows(60))},
        ("{inputs}/LB.csv",),
        "lookback",
        "LB.csv",
        command="run",
        sets=("features.lookback=80",),
    ),
    Case(
        "run_too_short_for_one_window",
        {"SHORT.csv": csv_text(good_rows(8))},
        ("{inputs}/SHORT.csv",),
        "window",
        "SHORT.csv",
        command="run",
    ),
    Case(
        "run_constant_series",
        {"CONST.csv": lambda: _constant(60)},
        ("{inputs}/CONST.csv",),
        "constant",
        "CONST.csv",
        command="run",
    ),
    Case(
        "run_bad_csv",
        {"RBAD.csv": with_row(5, "2021-01-11,abc,11,9,10,1000")},
        ("{inputs}/RBAD.csv",),
        "non-numeric",
        "RBAD.csv",
        command="run",
    ),
    Case(
        "run_split_jump",
        {"RSPL.csv": lambda: _split(0.5)},
        ("{inputs}/RSPL.csv",),
        "split",
        "RSPL.csv",
        command="run",
    ),
]


def _patch(cases: list[Case]) -> list[Case]:
    out = []
    for c in cases:
        if c.id == "missing_file":
            c = Case(c.id, {}, ("{inputs}/NOPE.csv",), c.needle, "NOPE.csv")
        out.append(c)
    return out


CASES = _patch(CASES)
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "duplicate case ids"
