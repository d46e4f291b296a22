"""The scoring memo: a run in which nothing the scores depend on changed reuses the last run's scores.

Why: the engine is a pure function of the replica, the warehouse usage, the configuration, the score
history before the as-of day and the forecast scale, at day granularity (engine/features.py: `as_of` is
the day at midnight; engine/trends.py ignores history from the same day). A second run on the same day
over an unchanged replica would compute the same numbers again: at 100,000 accounts per CRM that is about
a minute of loading three million replica rows and scoring them. With the memo it reads two Parquet frames
(issue 14: a run with no change in < 30 s).

The memo is used only when
- the run that saved it wrote everything: every lane ok, nothing queued for retry, no Bulk job running,
  so a write-back plan over the same scores is empty;
- its fingerprint matches this run's: the healthsync version, the as-of day, the CRMs, the whole configuration, the replica
  version of each scored object (bumped only when content changes: StateStore.upsert_replica), the
  forecast scale and the number of confirmed values, queued retries and running Bulk jobs;
- the run has no warehouse usage (the warehouse's pull is not versioned, so such runs always score).

On a hit the run skips loading the replica, scoring, the data-quality and drift records, the write-back
plan and the score history (it would repeat the memo run's rows for the same day). Playbooks and
escalation run as usual over the memo's scores, with the previous score and band set to the memo's own
(what the score history says after the memo run). The memo is derived data: losing it costs one full
scoring, nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
from datetime import datetime

import pandas as pd

from healthsync.config.settings import Settings
from healthsync.sync.pull import PULLED_OBJECTS
from healthsync.sync.score_job import ScoreResult
from healthsync.sync.state import StateStore, utc_naive
from healthsync.sync.version import installed_version

log = logging.getLogger(__name__)

#: bump when the payload's layout or the fingerprint's content changes: older memos then never match
MEMO_FORMAT = 1


def fingerprint(store: StateStore, settings: Settings, crms: list[str], now: datetime, inputs: dict | None = None) -> str:
    """A digest of everything the scores and the write-back plan depend on (see the module docstring).

    `inputs`: the store's part (StateStore.memo_inputs), when the caller has just read it.
    """
    parts = {
        "format": MEMO_FORMAT,
        "healthsync": installed_version("unknown"),  # another release may score differently
        "as_of": pd.Timestamp(utc_naive(now)).normalize().isoformat(),
        "crms": sorted(crms),
        "settings": settings.model_dump(mode="json"),
        "store": inputs if inputs is not None else store.memo_inputs(PULLED_OBJECTS),
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _pack(scored: ScoreResult) -> bytes:
    meta = json.dumps({"forecast_scale": scored.forecast_scale}).encode()
    blobs = [meta, _to_parquet(scored.scores), _to_parquet(scored.opportunities)]
    return b"".join(struct.pack(">Q", len(b)) + b for b in blobs)


def _unpack(payload: bytes) -> ScoreResult:
    blobs, at = [], 0
    while at < len(payload):
        (n,) = struct.unpack(">Q", payload[at : at + 8])
        blobs.append(payload[at + 8 : at + 8 + n])
        at += 8 + n
    meta = json.loads(blobs[0])
    scores = pd.read_parquet(io.BytesIO(blobs[1]))
    opportunities = pd.read_parquet(io.BytesIO(blobs[2]))
    return ScoreResult(scores, opportunities, forecast_scale=meta.get("forecast_scale"))


def reuse(store: StateStore, settings: Settings, crms: list[str], now: datetime) -> tuple[ScoreResult, str | None] | None:
    """The memo's scores and the run that saved them, when its fingerprint is this run's; else None."""
    memo = store.score_memo()
    if memo is None:
        return None
    saved, run_id, payload = memo
    if saved != fingerprint(store, settings, crms, now):
        return None
    try:
        scored = _unpack(payload)
    except Exception:  # noqa: BLE001 - a memo that cannot be read is a cache miss, never a failed run
        log.warning("the scoring memo could not be read; scoring afresh", exc_info=True)
        return None
    scores = scored.scores
    # what the score history holds after the memo run: its own score and band are the previous ones
    scores["previous_score"] = pd.to_numeric(scores["score"], errors="coerce").astype("float64")
    scores["previous_band"] = scores["band"].astype("string")
    return scored, run_id


def save(store: StateStore, settings: Settings, crms: list[str], now: datetime, scored: ScoreResult, run_id: str) -> bool:
    """Keep this run's scores for the next run, if it wrote everything; else forget any older memo."""
    inputs = store.memo_inputs(PULLED_OBJECTS)
    if inputs["failed"] or inputs["bulk_jobs"]:
        store.set_score_memo(None, run_id, None, now)
        return False
    try:
        payload = _pack(scored)
    except Exception:  # noqa: BLE001 - e.g. a column Parquet cannot hold: no memo, the next run scores afresh
        log.warning("the scores could not be kept for the next run; it will score afresh", exc_info=True)
        store.set_score_memo(None, run_id, None, now)
        return False
    store.set_score_memo(fingerprint(store, settings, crms, now, inputs), run_id, payload, now)
    return True


def forget(store: StateStore, run_id: str, now: datetime) -> None:
    store.set_score_memo(None, run_id, None, now)
