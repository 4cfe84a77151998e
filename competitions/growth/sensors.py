"""growth's sensor logs: one KIST per-minute greenhouse log (Korean or English headers, UTF-8 or cp949) -> one row
of daily aggregates (means, minima, maxima, sums of light and spray, hours of light, missing share)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError

# canonical name: (Korean header of the KIST logs, English aliases). The 2208 and 235897 logs share the headers.
META_COLUMNS = {
    "time": ("시간", ("time", "timestamp", "datetime")),
    "temp_in": ("내부온도관측치", ("inner_temperature", "internal_temperature", "temperature")),
    "humid_in": ("내부습도관측치", ("inner_humidity", "internal_humidity", "humidity")),
    "co2": ("CO2관측치", ("co2_ppm",)),
    "ec": ("EC관측치", ("ec_ds_m",)),
    "temp_out": ("외부온도관측치", ("outer_temperature", "external_temperature")),
    "humid_out": ("외부습도관측치", ("outer_humidity", "external_humidity")),
    "spray": ("최근분무량", ("recent_spray", "spray_volume")),
    "spray_day": ("일간누적분무량", ("daily_spray", "cumulative_spray")),
    "led_white": ("화이트 LED동작강도", ("white_led_intensity",)),
    "led_red": ("레드 LED동작강도", ("red_led_intensity",)),
    "led_blue": ("블루 LED동작강도", ("blue_led_intensity",)),
    "heat_load": ("난방부하", ("heating_load",)),
    "cool_load": ("냉방부하", ("cooling_load",)),
    "light_total": ("총추정광량", ("total_light", "light")),
    "light_white": ("백색광추정광량", ("white_light",)),
    "light_red": ("적색광추정광량", ("red_light",)),
    "light_blue": ("청색광추정광량", ("blue_light",)),
}
# What each sensor contributes to the day's row.
META_AGGREGATES = {
    "temp_in": ("mean", "min", "max"), "humid_in": ("mean", "min", "max"), "co2": ("mean", "min", "max"),
    "ec": ("mean", "max"), "temp_out": ("mean", "min", "max"), "humid_out": ("mean",),
    "spray": ("sum",), "spray_day": ("max",),
    "led_white": ("mean",), "led_red": ("mean",), "led_blue": ("mean",),
    "heat_load": ("mean",), "cool_load": ("mean",),
    "light_total": ("sum",), "light_white": ("sum",), "light_red": ("sum",), "light_blue": ("sum",),
}
META_FEATURES = [f"{c}_{a}" for c, aggs in META_AGGREGATES.items() for a in aggs] + \
    ["light_hours", "meta_rows", "meta_columns", "meta_missing_share", "meta_missing"]


def _alias_map() -> dict[str, str]:
    out = {}
    for name, (korean, english) in META_COLUMNS.items():
        for alias in (korean, name, *english):
            out[_norm(alias)] = name
    return out


def _norm(column: str) -> str:
    return "".join(str(column).lower().split()).replace("_", "").replace("-", "")


ALIASES = _alias_map()


def read_meta(path: str | Path) -> pd.DataFrame:
    """A meta CSV with canonical column names (unknown columns dropped, values numeric, bad cells NaN).
    UTF-8 first, then cp949 (Korean Windows exports). An empty file gives an empty frame."""
    path = Path(path)
    if path.stat().st_size == 0:
        return pd.DataFrame()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            raw = pd.read_csv(path, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: not a readable meta CSV ({e})") from None
    else:
        raise DataError(f"{path}: neither UTF-8 nor cp949 text")
    keep = {c: ALIASES[_norm(c)] for c in raw.columns if _norm(c) in ALIASES}
    df = raw[list(keep)].rename(columns=keep)
    df = df.loc[:, ~df.columns.duplicated()]
    for c in df.columns:
        if c != "time":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def aggregate_meta(df: pd.DataFrame) -> dict:
    """One day's log -> one feature row (META_FEATURES). A column the log lacks gives NaN for its features;
    `meta_columns` counts the sensor columns it has, `meta_missing_share` is the share of NaN cells among them."""
    out = {f: np.nan for f in META_FEATURES}
    out["meta_rows"] = len(df)
    sensors = list(META_AGGREGATES)
    if df.empty:
        out.update(meta_missing_share=1.0, meta_missing=1.0, meta_rows=0, meta_columns=0)
        return out
    for column, aggs in META_AGGREGATES.items():
        if column not in df:
            continue
        values = df[column]
        for a in aggs:
            # A sum over an all-NaN column is unknown, not 0.
            out[f"{column}_{a}"] = float(getattr(values, a)()) if values.notna().any() else np.nan
    present = [c for c in sensors if c in df]
    out["meta_columns"] = len(present)
    out["meta_missing_share"] = float(df[present].isna().to_numpy().mean()) if present else 1.0
    out["meta_missing"] = 0.0
    if "light_total" in df and df["light_total"].notna().any():
        out["light_hours"] = float((df["light_total"] > 0).sum() * _minutes_per_row(df) / 60)
    return out


def _minutes_per_row(df: pd.DataFrame) -> float:
    """The log's sampling interval (median step of the time column), 1 minute when it cannot be read."""
    if "time" in df:
        t = pd.to_datetime(df["time"], errors="coerce").dropna()
        if len(t) > 1:
            step = t.diff().dropna().median().total_seconds() / 60
            if step > 0:
                return float(step)
    return 1.0


def meta_features(path: str | Path | None) -> dict:
    """The feature row of one meta file; a missing file (None or absent) gives the all-NaN row with meta_missing=1."""
    if path is None or not Path(path).is_file():
        return aggregate_meta(pd.DataFrame())
    return aggregate_meta(read_meta(path))
