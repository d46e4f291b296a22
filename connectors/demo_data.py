"""Deterministic demo data: a portfolio for the sandbox and benchmarks, a history for validation.

Why it exists: the sandbox emulators, the benchmarks and `healthsync backtest` /
`healthsync calibrate` all need data whose outcomes *mean something*. So the
outcomes (churn, deal wins) follow a mechanism driven by the observed signals
the seeds name, plus noise. The mechanism is hidden from the scoring model, not
from readers; here it is.

Latent state
    Every account has a latent health ``h`` (standard normal, plus a persistent
    effect of its CSM's book, sd 0.35) and a second latent ``g`` ("value
    realised": drives utilisation, payments and escalations only, which is why
    weighting those signals well pays off). Each snapshot of the history moves
    both by an AR(1) random walk (``h' = 0.9 h + 0.44 e``), and accounts already
    decided to churn drift down (-0.35 per step). Every observed signal is
    ``f(h, g, own noise)``; the own noise is AR(1) too (persistent, so signals
    are sticky but not copies of the latent state).

Observed signals (canonical accounts columns)
    license utilisation  sigmoid(1.0 + 0.6 h + 0.8 g + 0.7 noise); active_users_30d ~ Binomial(seats, .)
    logins/user/week     2.5 * exp(0.55 h + 0.5 noise)
    feature adoption     Binomial(features_available, sigmoid(-0.2 + 0.8 h + 0.6 noise))
    qbrs_missed          ordinal of (-0.9 h + 0.8 noise): 0 / 1 / 2 / 3
    email_response_hours 20 * exp(-0.12 h + 0.75 noise): barely tied to health
    exec_sponsor         active / partial / none from (h + 0.8 noise)
    days_payment_late    0 for most; late with probability sigmoid(-1.8 - 0.6 h - 0.9 g + 0.8 noise),
                         then lognormal days (capped at 120)
    nps                  round(7 + 1.6 h + 1.2 noise) in 0-10, ~30% missing
    csm_sentiment        green / yellow / red from (h + 0.6 noise), ~15% missing
    tickets              Poisson per account, rate x exp(-0.35 h); the last 30 days' rate is
                         scaled by exp(-1.5 momentum) (momentum = change of h since the last
                         snapshot), so a declining account's ticket volume trends up;
                         escalated with probability sigmoid(-2.4 - 0.5 h - 0.7 g (+0.5 for P1)).

Hidden health ``z`` (what really drives outcomes)
    Each observed signal is turned into 0-100 points with the scoring logic of
    the measure table of seed 003_cec208348d92c0f6.txt (logins daily/weekly/
    monthly steps, % features used, active/seats, QBR 0/1/2+, email <24h/72h,
    exec sponsor, ticket trend 30d vs 90d, escalations 0/1/2+, payments on
    time/<30d/>30d, CSM sentiment; nps x 10 as an extra), missing values counted
    as neutral. ``z`` = (weighted sum - 72) / 15, about N(0, 1) at the first
    snapshot. The weights deliberately differ from the default model of seed 003
    (login 15%, features 15%, license 10%, QBR 10%, email 8%, exec 7%, ticket
    trend 10%, escalations 5%, payments 10%, sentiment 10%):

        license utilisation 0.24   payments 0.18   escalations 0.14
        logins 0.10   features 0.08   ticket trend 0.08   QBR 0.06
        sentiment 0.06   exec sponsor 0.04   nps 0.02   email response 0.00

    so the default weights rank accounts well (AUC ~0.93) but `calibrate` has
    something to learn (more on license utilisation, payments, escalations;
    nothing on email; ~0.96 with learned weights over the same metric scores).

Churn
    At every snapshot each present account not already leaving decides to leave
    with probability ``sigmoid(-5.3 - 4.0 z)`` per 90 days (scaled to the
    snapshot spacing at the same daily hazard). A decision is a notice: the
    account leaves at a uniform date in the last ``interval_days`` of the next
    ``horizon_days`` (e.g. 90-180 days after a quarterly snapshot), so it still
    appears, flagged, in the next snapshot, and no later decision can land in
    an earlier snapshot's horizon. ``churned`` is the fact "leaves within
    horizon_days after as_of". The first snapshot already holds accounts serving
    notice from an unseen earlier decision. Accounts that left are absent from
    later snapshots; new customers (6% of the first book per 90 days) join
    between snapshots. The churn rate per snapshot comes out at 10-17%. Churn is
    not tied to the renewal date (a customer can terminate or stop paying any
    time), which keeps renewal_date an honest lifecycle field rather than a
    leak of the outcome.

Deals
    Open opportunities carry the base probability of their stage (Salesforce's
    default stage probabilities). The chance to win is that base times a health
    multiplier: ``z`` is put on a 0-100 scale as ``70 + 15 z`` (spread like the
    default model's scores) and mapped piecewise-linearly through
    0->0.45, 30->0.6, 45->0.9, 60->1.1, 75->1.4, 90->1.6, 100->1.7, which,
    seen through the default model's (noisier) score, comes out close to the
    At-Risk 0.6 / Neutral 1.0 / Healthy 1.4 bands of seed
    000_caaf87bd3b38802c.txt; the win chance is capped at 0.97; renewals of accounts that churn are lost. So stage
    probabilities alone misjudge healthy and at-risk books, and health-adjusted
    forecasts beat them. CSM books differ in health (a persistent per-owner
    effect of sd 0.35 on ``h``), so per-owner forecasts differ too.

Shapes
    Portfolio: segments ~15/35/50% (enterprise/mid_market/smb) with lognormal
    seats and ARR per segment; ~8% of accounts in their first 90 days, the rest
    up to 6 years old; renewal_date is the next anniversary of customer_since.
    Tickets cover the trailing 180 days; 20% of opportunities closed in the
    last 180 days, the rest open with close dates up to 270 days ahead. History:
    each snapshot adds fresh open opportunities closing within the horizon,
    with `won` / `won_amount` as outcome.

Everything is vectorised numpy/pyarrow (no per-row Python) and deterministic
for a given seed: the same arguments give identical frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from healthsync.config.canonical import (
    ACCOUNTS,
    ACCOUNTS_HISTORY,
    EXEC_SPONSOR,
    OPPORTUNITIES,
    OPPORTUNITIES_HISTORY,
    PRIORITIES,
    SEGMENTS,
    SENTIMENT,
    TICKET_STATUS,
    TICKETS,
    FrameSpec,
    validate_frame,
)

__all__ = [
    "Portfolio",
    "History",
    "generate_portfolio",
    "generate_history",
    "write_portfolio",
    "write_history",
    "write_usage",
    "UsageEvents",
    "read_history",
    "STAGES",
    "HIDDEN_WEIGHTS",
    "BAD_RECORD_KINDS",
]

DEFAULT_AS_OF = date(2026, 1, 1)

#: (stage, base probability, forecast category). Probabilities are Salesforce's default
#: OpportunityStage values; the categories follow its default mapping.
STAGES = (
    ("Prospecting", 0.10, "Pipeline"),
    ("Needs Analysis", 0.20, "Pipeline"),
    ("Value Proposition", 0.50, "Best Case"),
    ("Proposal/Price Quote", 0.75, "Best Case"),
    ("Negotiation/Review", 0.90, "Commit"),
    ("Closed Won", 1.00, "Closed"),
    ("Closed Lost", 0.00, "Omitted"),
)
_OPEN_STAGE_SHARE = np.array([0.25, 0.25, 0.2, 0.18, 0.12])
_STAGE_NAMES = pa.array([s[0] for s in STAGES], pa.large_string())
_STAGE_PROB = np.array([s[1] for s in STAGES])
_FORECAST = ("Pipeline", "Best Case", "Commit", "Closed", "Omitted")
_STAGE_FORECAST = np.array([_FORECAST.index(s[2]) for s in STAGES])
_CLOSED_WON, _CLOSED_LOST = 5, 6

_OPP_TYPES = ("new_business", "renewal", "expansion")
_OPP_TYPE_SHARE = np.array([0.30, 0.30, 0.40])
_OPP_TYPE_LABEL = ("New Business", "Renewal", "Expansion")

# Segment mix ~15/35/50 and per-segment scale (brief; typical B2B SaaS book).
_SEGMENT_SHARE = np.array([0.15, 0.35, 0.50])
_SEATS_MEDIAN = np.array([400.0, 60.0, 12.0])
_ARR_PER_SEAT_MEDIAN = np.array([600.0, 700.0, 800.0])
_FEATURES_AVAILABLE = np.array([40, 30, 20])
_TICKET_SEGMENT_FACTOR = np.array([2.5, 1.2, 0.55])  # normalised below so the mean is as asked

#: Weights of the hidden health (see module docstring); the transforms are in `_hidden_health`.
HIDDEN_WEIGHTS = {
    "license_utilisation": 0.24,
    "payments": 0.18,
    "escalations": 0.14,
    "logins": 0.10,
    "features": 0.08,
    "ticket_trend": 0.08,
    "qbr": 0.06,
    "sentiment": 0.06,
    "exec_sponsor": 0.04,
    "nps": 0.02,
    "email_response": 0.00,
}
_HIDDEN_MEAN, _HIDDEN_SCALE = 72.0, 15.0  # mean and sd of the weighted points at the first snapshot, so z is ~N(0, 1)
#: Churn decision per 90 days: sigmoid(CHURN_INTERCEPT - CHURN_SLOPE * z) (see "Churn" above).
CHURN_INTERCEPT = -5.3
CHURN_SLOPE = 4.0
_NEW_CUSTOMERS_PER_90_DAYS = 0.06  # about the churn per quarter, so the book keeps its size
_WIN_HEALTH_MEAN, _WIN_HEALTH_SD = 70.0, 15.0
_WIN_MULTIPLIER = ([0, 30, 45, 60, 75, 90, 100], [0.45, 0.6, 0.9, 1.1, 1.4, 1.6, 1.7])

_FIRST = (
    "ana", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "irene", "jamal",
    "kate", "liam", "maria", "nadia", "omar", "priya", "quinn", "rosa", "sam", "tomas",
    "uma", "victor", "wen", "ximena", "yusuf", "zoe", "alex", "bianca", "chen", "dara",
)
_LAST = (
    "lopez", "smith", "nguyen", "garcia", "muller", "rossi", "kim", "silva", "khan", "cohen",
    "ivanova", "okafor", "tanaka", "dubois", "novak", "jensen", "moreau", "patel", "costa", "walsh",
    "berg", "fischer", "santos", "yilmaz", "kowalski", "brennan", "hughes", "sato", "ortiz", "reyes",
)
_COMPANY = (
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne", "wonka", "tyrell",
    "cyberdyne", "soylent", "gringotts", "oscorp", "aperture", "monarch", "nakatomi", "massive", "dunder",
    "pied", "sterling", "prestige", "bluth", "krusty", "gekko", "zorg", "virtucon", "contoso", "fabrikam",
    "northwind", "tailspin", "litware", "adatum", "proseware", "fourth", "wingtip", "woodgrove", "lucerne",
    "margie", "trey",
)


@dataclass
class UsageEvents:
    """A portfolio's product usage, as times before the end of the data (`write_usage` dates them).

    Events: one login (feature 0) or feature use (feature k = `feature_k`) by one user.
    Touchpoints: one marketing/sales interaction on one channel (index into TOUCH_CHANNELS).
    """

    product_ids: pa.Array  # the warehouse account_key of each account row
    account: np.ndarray
    seconds_before: np.ndarray
    user: np.ndarray
    feature: np.ndarray
    touch_account: np.ndarray
    touch_seconds_before: np.ndarray
    touch_channel: np.ndarray


@dataclass
class Portfolio:
    """One point-in-time book of business (canonical frames plus owners)."""

    accounts: pd.DataFrame
    opportunities: pd.DataFrame
    tickets: pd.DataFrame
    owners: pd.DataFrame
    as_of: date
    usage: UsageEvents | None = None


@dataclass
class History:
    """Snapshots with outcomes, for `healthsync backtest` and `healthsync calibrate`."""

    accounts_history: pd.DataFrame
    tickets: pd.DataFrame
    opportunities_history: pd.DataFrame
    as_of_dates: list[date]
    horizon_days: int | None  # None when read back from files


# --------------------------------------------------------------------------- strings


def _strings(values: pa.Array) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(values.cast(pa.large_string())))


def _numbered(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """`prefix` + zero-padded numbers, built as one byte buffer (10M ids in well under a second)."""
    n = len(numbers)
    p = prefix.encode()
    row = len(p) + width
    buf = np.empty((n, row), np.uint8)
    buf[:, : len(p)] = np.frombuffer(p, np.uint8)
    rest = numbers.astype(np.int64)  # one digit column at a time keeps memory at one int64 vector
    for column in range(row - 1, len(p) - 1, -1):
        rest, digit = np.divmod(rest, 10)
        buf[:, column] = digit + 48
    offsets = np.arange(n + 1, dtype=np.int64) * row
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))


def _pick(choices, codes: np.ndarray) -> pa.Array:
    """choices[codes] as an Arrow string array; negative codes become null."""
    table = pa.array(list(choices), pa.large_string())
    codes = np.asarray(codes)
    mask = codes < 0
    return table.take(pa.array(np.where(mask, 0, codes), mask=mask if mask.any() else None))


def _join(*parts) -> pa.Array:
    """Element-wise concatenation of Arrow string arrays and literal strings."""
    parts = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


def _id_width(count: int, minimum: int) -> int:
    return max(minimum, len(str(max(count, 1))))


# --------------------------------------------------------------------------- helpers


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _dates(base: date, days: np.ndarray) -> np.ndarray:
    """base + whole days as datetime64[us] (the dtype the canonical validator produces)."""
    return (np.datetime64(base, "D") + days.astype(np.int64).astype("timedelta64[D]")).astype("datetime64[us]")


def _stamp(base: date, seconds: np.ndarray) -> np.ndarray:
    """base + seconds as datetime64[us], whole seconds (what CRMs export and CSV keeps)."""
    return np.datetime64(base, "s").astype("datetime64[us]") + np.floor(seconds).astype("timedelta64[s]")


def _int(values: np.ndarray, mask: np.ndarray | None = None) -> pd.arrays.IntegerArray:
    return pd.arrays.IntegerArray(values.astype(np.int64), np.zeros(len(values), bool) if mask is None else mask)


def _bool(values: np.ndarray) -> pd.arrays.BooleanArray:
    return pd.arrays.BooleanArray(values.astype(bool), np.zeros(len(values), bool))


# --------------------------------------------------------------------------- owners


def _csm_count(n_accounts: int) -> int:
    return max(3, round(n_accounts / 40))


def _csm_of_account(n_accounts: int) -> np.ndarray:
    """Accounts are dealt to CSMs in contiguous blocks, so each CSM holds a ~40-account book."""
    return (np.arange(n_accounts, dtype=np.int64) * _csm_count(n_accounts)) // n_accounts


def _owners(n_accounts: int) -> tuple[pd.DataFrame, pa.Array]:
    """CSMs (~1 per 40 accounts, at least 3), managers (1 per ~6 CSMs), one VP."""
    n_csm = _csm_count(n_accounts)
    n_mgr = max(1, math.ceil(n_csm / 6))
    total = n_csm + n_mgr + 1
    i = np.arange(total)
    combos = len(_FIRST) * len(_LAST)
    # spread people over the name grid (stride coprime with it) so neighbours differ in both names
    k = (i * 7 + i // combos) % combos
    first = k % len(_FIRST)
    last = (k // len(_FIRST)) % len(_LAST)
    suffix = i // combos
    suffix_text = pa.array(np.where(suffix > 0, suffix.astype(str), ""), pa.large_string())
    first_a, last_a = _pick(_FIRST, first), _pick(_LAST, last)
    email = _join(first_a, ".", last_a, suffix_text, "@example.com")
    name = _join(pc.utf8_capitalize(first_a), " ", pc.utf8_capitalize(last_a), suffix_text)
    role = np.array([0] * n_csm + [1] * n_mgr + [2])
    manager = np.empty(total, np.int64)
    manager[:n_csm] = n_csm + (np.arange(n_csm) // 6) % n_mgr
    manager[n_csm : n_csm + n_mgr] = total - 1
    manager[-1] = -1
    manager_email = email.take(pa.array(np.where(manager < 0, 0, manager), mask=manager < 0))
    owners = pd.DataFrame(
        {
            "email": _strings(email),
            "name": _strings(name),
            "role": _strings(_pick(("csm", "manager", "vp"), role)),
            "manager_email": _strings(manager_email),
        }
    )
    return owners, email.slice(0, n_csm)


# --------------------------------------------------------------------------- the simulation


class _Book:
    """Static account attributes plus the latent state that evolves between snapshots."""

    NOISES = ("util", "login", "feat", "qbr", "email", "exec", "late", "nps", "sent")

    def __init__(self, rng: np.random.Generator, n: int, tickets_per_account: float):
        self.n = n
        self.segment = rng.choice(3, size=n, p=_SEGMENT_SHARE)
        self.seats = np.maximum(1, np.round(_SEATS_MEDIAN[self.segment] * rng.lognormal(0, 0.7, n))).astype(np.int64)
        self.arr = np.round(self.seats * _ARR_PER_SEAT_MEDIAN[self.segment] * rng.lognormal(0, 0.35, n), 2)
        self.features_available = _FEATURES_AVAILABLE[self.segment]
        # tenure at the first as_of: ~8% in their first 90 days (onboarding), the rest up to 6 years
        onboarding = rng.random(n) < 0.08
        self.tenure0 = np.where(onboarding, rng.integers(0, 90, n), rng.integers(90, 6 * 365, n))
        self.h = rng.standard_normal(n)
        # some CSM books are healthier than others (persistent), so per-owner forecasts differ
        self.owner_effect = 0.35 * rng.standard_normal(_csm_count(n))[_csm_of_account(n)]
        self.g = rng.standard_normal(n)
        self.noise = {k: rng.standard_normal(n) for k in self.NOISES}
        self.product_ids: pa.Array | None = None  # set with the account identities
        self.nps_missing = rng.random(n) < 0.30
        self.sentiment_missing = rng.random(n) < 0.15
        factor = _TICKET_SEGMENT_FACTOR / (_TICKET_SEGMENT_FACTOR @ _SEGMENT_SHARE)
        # per-day ticket rate so the trailing 180 days hold `tickets_per_account` on average
        self.ticket_rate = tickets_per_account / 180.0 * factor[self.segment] * rng.lognormal(-0.18, 0.6, n)
        self.ticket_rate /= np.exp(0.35**2 / 2)  # keep the mean after the health factor exp(-0.35 h)

    @property
    def health(self) -> np.ndarray:
        return self.h + self.owner_effect

    def step(self, rng: np.random.Generator, drift: np.ndarray) -> np.ndarray:
        """Move the latent state one snapshot ahead; returns the momentum (change of h)."""
        new = 0.9 * self.h + math.sqrt(1 - 0.9**2) * rng.standard_normal(self.n) + drift
        momentum = new - self.h
        self.h = new
        self.g = 0.9 * self.g + math.sqrt(1 - 0.9**2) * rng.standard_normal(self.n) + drift
        for k in self.NOISES:
            self.noise[k] = 0.7 * self.noise[k] + math.sqrt(1 - 0.7**2) * rng.standard_normal(self.n)
        return momentum

    def signals(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Observed account signals from the current latent state."""
        h, g, e, n = self.health, self.g, self.noise, self.n
        util = _sigmoid(1.0 + 0.6 * h + 0.8 * g + 0.7 * e["util"])
        active = rng.binomial(self.seats, util)
        logins = np.round(2.5 * np.exp(0.55 * h + 0.5 * e["login"]), 2)
        used = rng.binomial(self.features_available, _sigmoid(-0.2 + 0.8 * h + 0.6 * e["feat"]))
        q = -0.9 * h + 0.8 * e["qbr"]
        qbrs = np.digitize(q, [0.45, 1.2, 2.0])
        email = np.round(20.0 * np.exp(-0.12 * h + 0.75 * e["email"]), 1)
        x = h + 0.8 * e["exec"]
        exec_code = np.where(x > 0.1, 0, np.where(x > -0.8, 1, 2))
        late = rng.random(n) < _sigmoid(-1.8 - 0.6 * h - 0.9 * g + 0.8 * e["late"])
        days_late = np.where(late, np.minimum(120, np.ceil(np.exp(2.3 - 0.4 * h + 0.6 * rng.standard_normal(n)))), 0)
        nps = np.clip(np.round(7.0 + 1.6 * h + 1.2 * e["nps"]), 0, 10)
        s = h + 0.6 * e["sent"]
        sentiment = np.where(s > 0.3, 0, np.where(s > -0.9, 1, 2))
        return {
            "active_users_30d": active,
            "logins_per_user_week": logins,
            "features_used": used,
            "qbrs_missed": qbrs,
            "email_response_hours": email,
            "exec_sponsor": exec_code,
            "days_payment_late": days_late.astype(np.int64),
            "nps": np.where(self.nps_missing, np.nan, nps),
            "csm_sentiment": np.where(self.sentiment_missing, -1, sentiment),
        }


def _tickets_window(rng, book: _Book, alive: np.ndarray, momentum: np.ndarray, start_s: float, end_s: float):
    """Tickets created in (start_s, end_s] seconds; the last 30 days' rate follows the momentum."""
    recent_s = max(start_s, end_s - 30 * 86400.0)
    rate = book.ticket_rate * np.exp(-0.35 * book.health) * alive
    # exp(-1.5 m) has mean exp((1.5 * 0.45)^2 / 2) for quarterly momentum m ~ N(0, 0.45): divide it out
    recent_rate = rate * np.exp(-1.5 * momentum - (1.5 * 0.45) ** 2 / 2)
    idx_parts, t_parts = [], []
    for lo, hi, r in ((start_s, recent_s, rate), (recent_s, end_s, recent_rate)):
        if hi <= lo:
            continue
        counts = rng.poisson(r * (hi - lo) / 86400.0)
        idx = np.repeat(np.arange(book.n, dtype=np.int32), counts)
        idx_parts.append(idx)
        t_parts.append(lo + rng.random(len(idx)) * (hi - lo))
    idx = np.concatenate(idx_parts) if idx_parts else np.empty(0, np.int32)
    created = np.concatenate(t_parts) if t_parts else np.empty(0)
    h = book.health[idx]
    g = book.g[idx]
    # priorities: P1..P4 about 5/20/45/30%, a bit more urgent for unhealthy accounts
    u = rng.random(len(idx)) - 0.03 * h
    priority = np.digitize(u, [0.05, 0.25, 0.70])
    escalated = rng.random(len(idx)) < _sigmoid(-2.4 - 0.5 * h - 0.7 * g + 0.5 * (priority == 0))
    hours = np.exp(np.log(np.array([6.0, 20.0, 48.0, 96.0]))[priority] + 0.8 * rng.standard_normal(len(idx)))
    resolved = created + hours * 3600.0
    return idx, created, resolved, priority, escalated


@dataclass
class _Tickets:
    account: np.ndarray
    created: np.ndarray  # seconds since the simulation's day zero
    resolved: np.ndarray
    priority: np.ndarray
    escalated: np.ndarray

    @staticmethod
    def concat(parts: list["_Tickets"]) -> "_Tickets":
        return _Tickets(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Tickets.__dataclass_fields__))

    def subset(self, keep: np.ndarray) -> "_Tickets":
        return _Tickets(*(getattr(self, f)[keep] for f in _Tickets.__dataclass_fields__))

    def features(self, n: int, as_of_s: float) -> dict[str, np.ndarray]:
        """Trailing 30/90-day counts and 90-day escalations per account at `as_of_s`."""
        c = self.created
        in90 = (c <= as_of_s) & (c > as_of_s - 90 * 86400.0)
        in30 = in90 & (c > as_of_s - 30 * 86400.0)
        acct = self.account
        return {
            "tickets_30d": np.bincount(acct[in30], minlength=n),
            "tickets_90d": np.bincount(acct[in90], minlength=n),
            "escalations_90d": np.bincount(acct[in90 & self.escalated], minlength=n),
        }


def _points(values: np.ndarray, cuts: list[float], points: list[float]) -> np.ndarray:
    """Step rule: the points of the highest cut the value reaches (`cuts` descending)."""
    return np.select([values >= c for c in cuts], points[:-1], points[-1])


def _hidden_health(sig: dict, tick: dict, seats: np.ndarray, features_available: np.ndarray) -> np.ndarray:
    """The outcome-driving health z (~N(0,1) at the first snapshot; higher is healthier).

    Each signal is put on 0-100 points with the scoring logic of the measure table of
    seed 003_cec208348d92c0f6.txt (so a model that learns weights over those metric
    scores can recover z exactly); z is their weighted sum under HIDDEN_WEIGHTS.
    """
    tickets_30d, tickets_90d = tick["tickets_30d"], tick["tickets_90d"]
    ratio = np.divide(tickets_30d, tickets_90d / 3.0, out=np.ones(len(tickets_30d)), where=tickets_90d > 0)
    sentiment = sig["csm_sentiment"]
    parts = {
        "license_utilisation": np.minimum(100.0, 100.0 * sig["active_users_30d"] / np.maximum(seats, 1)),
        "features": 100.0 * sig["features_used"] / features_available,
        "logins": _points(sig["logins_per_user_week"], [5, 1, 0.25], [100, 70, 40, 0]),
        "qbr": np.select([sig["qbrs_missed"] == 0, sig["qbrs_missed"] == 1], [100, 50], 0),
        "email_response": np.select([sig["email_response_hours"] < 24, sig["email_response_hours"] <= 72], [100, 60], 20),
        "exec_sponsor": np.array([100.0, 50.0, 0.0])[sig["exec_sponsor"]],
        "ticket_trend": np.select([ratio < 0.8, ratio > 1.2], [100, 30], 70),
        "escalations": np.select([tick["escalations_90d"] == 0, tick["escalations_90d"] == 1], [100, 60], 20),
        "payments": np.select([sig["days_payment_late"] == 0, sig["days_payment_late"] < 30], [100, 50], 10),
        "sentiment": np.where(sentiment < 0, 50.0, np.array([100.0, 50.0, 0.0])[np.maximum(sentiment, 0)]),
        "nps": np.where(np.isnan(sig["nps"]), 70.0, np.nan_to_num(sig["nps"]) * 10.0),
    }
    raw = sum(HIDDEN_WEIGHTS[k] * v for k, v in parts.items())
    return (raw - _HIDDEN_MEAN) / _HIDDEN_SCALE


def _win_probability(base: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Stage probability x a health multiplier about as strong as seed 000_caaf87bd3b38802c.txt's
    bands (At-Risk 0.6 / Neutral 1.0 / Healthy 1.4), on a 0-100 health scale spread like the
    default model's scores (mean ~70, sd ~15)."""
    health = np.clip(_WIN_HEALTH_MEAN + _WIN_HEALTH_SD * z, 0, 100)
    multiplier = np.interp(health, *_WIN_MULTIPLIER)
    return np.clip(base * multiplier, 0.0, 0.97)


# --------------------------------------------------------------------------- frames


def _accounts_frame(book: _Book, rows: np.ndarray, sig: dict, as_of: date, ids: pa.Array, names: pa.Array,
                    domains: pa.Array, owner: pa.Array, tenure_days: np.ndarray) -> pd.DataFrame:
    take = pa.array(rows)
    tenure = tenure_days[rows]
    since = _dates(as_of, -tenure)
    renewal = _dates(as_of, 365 - tenure % 365)
    s = {k: v[rows] for k, v in sig.items()}
    frame = pd.DataFrame(
        {
            "account_id": _strings(ids.take(take)),
            "name": _strings(names.take(take)),
            "segment": _strings(_pick(SEGMENTS, book.segment[rows])),
            "arr": book.arr[rows],
            "seats_purchased": _int(book.seats[rows]),
            "active_users_30d": _int(s["active_users_30d"]),
            "logins_per_user_week": s["logins_per_user_week"],
            "features_used": _int(s["features_used"]),
            "features_available": _int(book.features_available[rows]),
            "qbrs_missed": _int(s["qbrs_missed"]),
            "email_response_hours": s["email_response_hours"],
            "exec_sponsor": _strings(_pick(EXEC_SPONSOR, s["exec_sponsor"])),
            "days_payment_late": _int(s["days_payment_late"]),
            "nps": s["nps"],
            "csm_sentiment": _strings(_pick(SENTIMENT, s["csm_sentiment"])),
            "customer_since": since,
            "renewal_date": renewal,
            "owner_email": _strings(owner.take(take)),
            "product_account_id": _strings(_crm_product_ids(book.product_ids, rows)),
        }
    )
    frame["domain"] = _strings(domains.take(take))
    return frame


def _account_identity(book: _Book, csm_emails: pa.Array, seed: int):
    n = book.n
    width = _id_width(n, 7)
    ids = _numbered("A", np.arange(1, n + 1), width)
    number = _numbered("", np.arange(1, n + 1), max(6, width - 1))
    company = np.arange(n) % len(_COMPANY)
    word = _pick(_COMPANY, company)
    names = _join(pc.utf8_capitalize(word), " ", number)
    domains = _join(word, "-", number, ".example.com")
    owner = csm_emails.take(pa.array(_csm_of_account(n)))
    # the product's own account id (the warehouse's account_key); distinct per generated book
    book.product_ids = _join(f"prd{seed}-", number)
    return ids, names, domains, owner


#: every this-many-th account's CRM record lacks its product account id (the field was never filled
#: in), so the demo shows unmatched warehouse keys and accounts without usage (2%)
PRODUCT_ID_GAP = 50


def _crm_product_ids(product_ids: pa.Array, rows: np.ndarray) -> pa.Array:
    blank = (rows % PRODUCT_ID_GAP) == PRODUCT_ID_GAP - 1
    return product_ids.take(pa.array(rows, mask=blank if blank.any() else None))


def _tickets_frame(t: _Tickets, account_ids: pa.Array, day_zero: date, data_end_s: float, first_number: int = 1):
    n = len(t.account)
    closed = t.resolved <= data_end_s
    closed_at = _stamp(day_zero, np.where(closed, t.resolved, 0.0))
    closed_at[~closed] = np.datetime64("NaT")
    return pd.DataFrame(
        {
            "ticket_id": _strings(_numbered("T", np.arange(first_number, first_number + n), _id_width(n, 8))),
            "account_id": _strings(account_ids.take(pa.array(t.account))),
            "priority": _strings(_pick(PRIORITIES, t.priority)),
            "status": _strings(_pick(TICKET_STATUS, np.where(closed, 1, 0))),
            "created_at": _stamp(day_zero, t.created),
            "closed_at": closed_at,
            "escalated": _bool(t.escalated),
        }
    )


def _opportunities(rng, book: _Book, rows: np.ndarray, z: np.ndarray, as_of: date, per_account: float,
                   account_ids: pa.Array, account_names: pa.Array, owner: pa.Array, closed_share: float,
                   horizon_days: int, first_number: int, churn_within: np.ndarray | None = None):
    """Opportunities of accounts `rows`; returns (frame, won 0/1 for every row)."""
    counts = rng.poisson(per_account, len(rows))
    acct = np.repeat(rows, counts)
    k = len(acct)
    zz = z[acct]
    kind = rng.choice(3, size=k, p=_OPP_TYPE_SHARE)
    arr = book.arr[acct]
    scale = np.array([0.5, 1.0, 0.25])[kind]
    amount = np.round(arr * scale * rng.lognormal(0, 0.3, k), 2)
    stage = rng.choice(5, size=k, p=_OPEN_STAGE_SHARE)
    won = rng.random(k) < _win_probability(_STAGE_PROB[stage], zz)
    if churn_within is not None:
        won &= ~((kind == 1) & churn_within[acct])  # a churning account does not renew
    is_closed = rng.random(k) < closed_share
    close_days = np.where(is_closed, -rng.integers(1, 181, k), rng.integers(1, horizon_days + 1, k))
    final_stage = np.where(is_closed, np.where(won, _CLOSED_WON, _CLOSED_LOST), stage)
    take = pa.array(acct)
    frame = pd.DataFrame(
        {
            "opportunity_id": _strings(_numbered("O", np.arange(first_number, first_number + k), _id_width(k, 7))),
            "account_id": _strings(account_ids.take(take)),
            "name": _strings(_join(account_names.take(take), " - ", _pick(_OPP_TYPE_LABEL, kind))),
            "stage": _strings(_STAGE_NAMES.take(pa.array(final_stage))),
            "amount": amount,
            "probability": _STAGE_PROB[final_stage],
            "close_date": _dates(as_of, close_days),
            "type": _strings(_pick(_OPP_TYPES, kind)),
            "forecast_category": _strings(_pick(_FORECAST, _STAGE_FORECAST[final_stage])),
            "is_closed": _bool(is_closed),
            "is_won": _bool(is_closed & won),
            "owner_email": _strings(owner.take(take)),
        }
    )
    return frame, won


# --------------------------------------------------------------------------- public API


def generate_portfolio(
    n_accounts: int,
    seed: int = 0,
    as_of: date | None = None,
    opportunities_per_account: float = 5.0,
    tickets_per_account: float = 10.0,
    inject_bad_records: int = 0,
    usage: bool = False,
) -> Portfolio:
    """A book of `n_accounts` accounts at `as_of` with opportunities, trailing-180-day tickets and owners.

    Frames hold exactly the canonical columns and dtypes (accounts add `domain`).
    `usage` also generates the product usage behind the usage signals (`Portfolio.usage`,
    written to DuckDB by `write_usage`; see "Product usage" in the module docstring); it
    draws from its own random stream, so the frames are the same either way.
    `inject_bad_records` appends that many invalid account rows, cycling through
    missing id, duplicate id, negative ARR, unparsable date, unknown enum, for
    validator tests (customer_since then holds ISO text instead of datetimes).
    """
    if n_accounts < 1:
        raise ValueError(f"n_accounts must be at least 1, got {n_accounts}")
    as_of = as_of or DEFAULT_AS_OF
    rng = np.random.default_rng(seed)
    book = _Book(rng, n_accounts, tickets_per_account)
    owners, csm = _owners(n_accounts)
    ids, names, domains, owner = _account_identity(book, csm, seed)
    momentum = 0.45 * rng.standard_normal(n_accounts)  # change of health over the last quarter
    sig = book.signals(rng)
    day_zero = as_of - timedelta(days=180)
    end_s = 180 * 86400.0
    raw = _tickets_window(rng, book, np.ones(n_accounts), momentum, 0.0, end_s)
    tickets = _Tickets(*raw)
    z = _hidden_health(sig, tickets.features(n_accounts, end_s), book.seats, book.features_available)
    rows = np.arange(n_accounts)
    accounts = _accounts_frame(book, rows, sig, as_of, ids, names, domains, owner, book.tenure0)
    opportunities, _ = _opportunities(
        rng, book, rows, z, as_of, opportunities_per_account, ids, names, owner,
        closed_share=0.2, horizon_days=270, first_number=1,
    )
    tickets_frame = _tickets_frame(tickets, ids, day_zero, end_s)
    if inject_bad_records:
        accounts = _inject_bad_accounts(accounts, inject_bad_records, seed)
    events = _usage_events(np.random.default_rng([seed, 2]), book, sig, momentum) if usage else None
    return Portfolio(accounts, opportunities, tickets_frame, owners, as_of, events)


BAD_RECORD_KINDS = ("missing id", "duplicate id", "negative arr", "unparsable date", "unknown enum")


def _inject_bad_accounts(accounts: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """Append `count` invalid copies of random accounts, one defect each (kinds in BAD_RECORD_KINDS order)."""
    rng = np.random.default_rng([seed, 1])
    rows = rng.integers(0, len(accounts), count)
    bad = accounts.iloc[rows].reset_index(drop=True).copy()
    bad["customer_since"] = bad["customer_since"].dt.strftime("%Y-%m-%d").astype(object)
    suffix = np.arange(len(accounts) + 1, len(accounts) + count + 1)
    bad["account_id"] = _strings(_numbered("X", suffix, _id_width(len(accounts) + count, 7)))
    for i in range(count):  # `count` is a handful of rows: test input, not data volume
        kind = i % len(BAD_RECORD_KINDS)
        if kind == 0:
            bad.loc[i, "account_id"] = pd.NA
        elif kind == 1:
            bad.loc[i, "account_id"] = accounts["account_id"].iloc[rows[i]]
        elif kind == 2:
            bad.loc[i, "arr"] = -abs(float(bad.loc[i, "arr"])) - 1.0
        elif kind == 3:
            bad.loc[i, "customer_since"] = "31/02/2024x"
        else:
            bad.loc[i, "exec_sponsor"] = "sometimes"
    out = accounts.copy()
    out["customer_since"] = out["customer_since"].dt.strftime("%Y-%m-%d").astype(object)
    return pd.concat([out, bad], ignore_index=True)


def generate_history(
    n_accounts: int,
    seed: int = 0,
    snapshots: int = 6,
    start: date | None = None,
    interval_days: int = 90,
    horizon_days: int = 180,
    opportunities_per_account: float = 2.0,
    tickets_per_account: float = 10.0,
) -> History:
    """Snapshots every `interval_days` from `start` with churn and deal outcomes (see module docstring).

    The first snapshot holds `n_accounts` accounts; new customers join between
    snapshots at about the rate others leave, so the book stays roughly that size.
    `start` defaults to the date that puts the last snapshot's horizon just
    before 2026-01-01 (every outcome is in the past).
    """
    if n_accounts < 1 or snapshots < 1 or interval_days < 1 or horizon_days < 1:
        raise ValueError("n_accounts, snapshots, interval_days and horizon_days must all be at least 1")
    start = start or DEFAULT_AS_OF - timedelta(days=interval_days * (snapshots - 1) + horizon_days)
    rng = np.random.default_rng(seed)
    joining = int(round(n_accounts * _NEW_CUSTOMERS_PER_90_DAYS * interval_days / 90.0))
    pool = n_accounts + (snapshots - 1) * joining
    book = _Book(rng, pool, tickets_per_account)
    _, csm = _owners(pool)
    ids, names, domains, owner = _account_identity(book, csm, seed)
    join_step = np.concatenate([np.zeros(n_accounts, np.int64), np.repeat(np.arange(1, snapshots), joining)])
    # customer_since in days from `start`: the first book as generated, newcomers since the previous snapshot
    since_day = np.where(join_step == 0, -book.tenure0, join_step * interval_days - rng.integers(0, interval_days, pool))
    day_zero = start - timedelta(days=180)
    since_s = (180 + since_day) * 86400.0
    as_of_s = [(180 + k * interval_days) * 86400.0 for k in range(snapshots)]
    leave_s = np.full(pool, np.inf)  # when the account leaves (seconds since day_zero)
    momentum = 0.45 * rng.standard_normal(pool)
    ticket_parts: list[_Tickets] = []
    account_frames, opp_frames = [], []
    opp_number = 1
    for k, now in enumerate(as_of_s):
        as_of = start + timedelta(days=k * interval_days)
        if k > 0:
            momentum = book.step(rng, drift=np.where(np.isfinite(leave_s), -0.35, 0.0))
        present = (join_step <= k) & (leave_s > now)
        window_start = 0.0 if k == 0 else as_of_s[k - 1]
        part = _Tickets(*_tickets_window(rng, book, present, momentum, window_start, now))
        ticket_parts.append(part.subset(part.created >= since_s[part.account]))  # none before the customer joined
        # only windows reaching into the trailing 90 days matter for today's features
        recent = [t for t, end in zip(ticket_parts, as_of_s) if end > now - 90 * 86400.0]
        sig = book.signals(rng)
        z = _hidden_health(sig, _Tickets.concat(recent).features(pool, now), book.seats, book.features_available)
        # the decision probability is per 90 days; other spacings keep the same hazard per day
        stay = (1.0 - _sigmoid(CHURN_INTERCEPT - CHURN_SLOPE * z)) ** (interval_days / 90.0)
        if k == 0 and horizon_days > interval_days:
            # the book did not start today: some accounts decided at the previous (unseen)
            # snapshot and are serving their notice, as in every later snapshot (half the rate:
            # the low tail of a running book has already been thinned by earlier departures)
            earlier = present & (rng.random(pool) < 0.5 * (1.0 - stay))
            notice = max(0, horizon_days - 2 * interval_days) + rng.random(int(earlier.sum())) * min(
                horizon_days - interval_days, interval_days
            )
            leave_s[earlier] = now + notice * 86400.0
        leaves = present & ~np.isfinite(leave_s) & (rng.random(pool) < 1.0 - stay)
        # notice period: the account leaves in the last `interval_days` of the horizon, so no
        # later decision can land inside this snapshot's horizon and labels are final now
        notice = max(0, horizon_days - interval_days) + rng.random(int(leaves.sum())) * min(horizon_days, interval_days)
        leave_s[leaves] = now + notice * 86400.0
        churned = leave_s <= now + horizon_days * 86400.0
        rows = np.flatnonzero(present)
        frame = _accounts_frame(book, rows, sig, as_of, ids, names, domains, owner, k * interval_days - since_day)
        domain = frame.pop("domain")
        frame["as_of"] = np.datetime64(as_of, "D").astype("datetime64[us]")
        frame["churned"] = _int(churned[rows])
        frame["domain"] = domain
        account_frames.append(frame)
        opps, won = _opportunities(
            rng, book, rows, z, as_of, opportunities_per_account, ids, names, owner,
            closed_share=0.0, horizon_days=horizon_days, first_number=opp_number, churn_within=churned,
        )
        opp_number += len(opps)
        opps["as_of"] = np.datetime64(as_of, "D").astype("datetime64[us]")
        opps["won"] = _int(won)
        opps["won_amount"] = np.where(won, opps["amount"].to_numpy(), 0.0)
        opp_frames.append(opps)
    tickets_frame = _tickets_frame(_Tickets.concat(ticket_parts), ids, day_zero, as_of_s[-1])
    return History(
        pd.concat(account_frames, ignore_index=True),
        tickets_frame,
        pd.concat(opp_frames, ignore_index=True),
        [start + timedelta(days=k * interval_days) for k in range(snapshots)],
        horizon_days,
    )


# --------------------------------------------------------------------------- product usage

DAY_S = 86400.0
TOUCH_CHANNELS = ("email", "webinar", "call", "event", "ads")


def _within(counts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of np.repeat(arange(n), counts)."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _usage_events(rng: np.random.Generator, book: _Book, sig: dict, momentum: np.ndarray) -> UsageEvents:
    """Events whose warehouse aggregates reproduce the account's usage signals (module docstring)."""
    n = book.n
    index = np.arange(n, dtype=np.int64)
    users = sig["active_users_30d"].astype(np.int64)
    logins = sig["logins_per_user_week"]
    used = sig["features_used"].astype(np.int64)
    # last 30 days: logins/user/week x users x 30/7 logins, at least one per active user
    recent = np.where(users > 0, np.maximum(np.round(logins * users * 30 / 7), users), 0).astype(np.int64)
    # days 30-90: the same daily level moved by the quarter's momentum (a declining account used it more before)
    daily = logins * np.maximum(users, 1) / 7.0
    early = rng.poisson(60.0 * daily * np.exp(-momentum))
    acct_r = np.repeat(index, recent)
    k = _within(recent)
    active = users[acct_r]
    user_r = np.where(k < active, k, np.floor(rng.random(len(acct_r)) * active)).astype(np.int64)
    t_r = rng.random(len(acct_r)) * 30 * DAY_S
    acct_e = np.repeat(index, early)
    user_e = np.floor(rng.random(len(acct_e)) * np.maximum(users[acct_e], 1) * 1.2).astype(np.int64)
    t_e = (30 + rng.random(len(acct_e)) * 60) * DAY_S
    # features: exactly `features_used` distinct ones in the last 30 days (only where someone was active)
    distinct = np.where(users > 0, used, 0)
    acct_f = np.repeat(index, distinct)
    feat_f = _within(distinct) + 1
    uses = 1 + rng.poisson(1.5, len(acct_f))
    acct_f, feat_f = np.repeat(acct_f, uses), np.repeat(feat_f, uses)
    user_f = np.floor(rng.random(len(acct_f)) * users[acct_f]).astype(np.int64)
    t_f = rng.random(len(acct_f)) * 30 * DAY_S
    older = rng.poisson(np.maximum(used, 1).astype(float))  # feature use in days 30-90
    acct_o = np.repeat(index, older)
    feat_o = 1 + np.floor(rng.random(len(acct_o)) * book.features_available[acct_o]).astype(np.int64)
    user_o = np.floor(rng.random(len(acct_o)) * np.maximum(users[acct_o], 1) * 1.2).astype(np.int64)
    t_o = (30 + rng.random(len(acct_o)) * 60) * DAY_S
    # touchpoints over 90 days, more for healthier (more engaged) accounts
    touches = rng.poisson(4.0 * np.exp(0.4 * book.health))
    acct_t = np.repeat(index, touches)
    return UsageEvents(
        product_ids=book.product_ids,
        account=np.concatenate([acct_r, acct_e, acct_f, acct_o]).astype(np.int32),
        seconds_before=np.concatenate([t_r, t_e, t_f, t_o]),
        user=np.concatenate([user_r, user_e, user_f, user_o]).astype(np.int32),
        feature=np.concatenate([np.zeros(len(acct_r) + len(acct_e), np.int64), feat_f, feat_o]).astype(np.int16),
        touch_account=acct_t.astype(np.int32),
        touch_seconds_before=rng.random(len(acct_t)) * 90 * DAY_S,
        touch_channel=rng.integers(0, len(TOUCH_CHANNELS), len(acct_t)).astype(np.int8),
    )


def write_usage(portfolios: list[Portfolio], path, end: datetime) -> Path:
    """Write the portfolios' usage to a DuckDB file, dated back from `end`; returns the path.

    Tables (the shape `sources.warehouse` reads, README "Warehouse"):
    `usage_events(account_key, occurred_at, user_id, feature, value)`, one row per event, in time
    order (as an event table is loaded, so the timestamp's zone maps prune), and
    `touchpoints(account_key, touched_at, channel)`.
    """
    import duckdb

    end64 = np.datetime64(end.astimezone(timezone.utc).replace(tzinfo=None) if end.tzinfo else end, "us")
    keys, events, touches = [], [], []
    offset = 0
    for p in portfolios:
        u = p.usage
        if u is None:
            raise ValueError("write_usage: generate the portfolio with usage=True")
        keys.append(u.product_ids)
        events.append(pa.table({
            "k": u.account.astype(np.int64) + offset,
            "t": end64 - (u.seconds_before * 1e6).astype("timedelta64[us]"),
            "u": u.user, "f": u.feature,
        }))
        touches.append(pa.table({
            "k": u.touch_account.astype(np.int64) + offset,
            "t": end64 - (u.touch_seconds_before * 1e6).astype("timedelta64[us]"),
            "c": u.touch_channel,
        }))
        offset += len(u.product_ids)
    key_table = pa.table({"k": np.arange(offset, dtype=np.int64), "key": pa.concat_arrays(keys)})
    channel_table = pa.table({"c": np.arange(len(TOUCH_CHANNELS), dtype=np.int8), "channel": list(TOUCH_CHANNELS)})
    event_table, touch_table = pa.concat_tables(events), pa.concat_tables(touches)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, Path(str(path) + ".wal")):
        if stale.exists():
            stale.unlink()
    con = duckdb.connect(str(path))
    try:
        con.execute("SET enable_progress_bar = false")
        con.register("key_table", key_table)
        con.register("event_table", event_table)
        con.register("touch_table", touch_table)
        con.register("channel_table", channel_table)
        con.execute(
            "CREATE TABLE usage_events AS SELECT k.key AS account_key, e.t AS occurred_at, "
            "'u' || CAST(e.u AS VARCHAR) AS user_id, "
            "CASE WHEN e.f = 0 THEN 'login' ELSE 'feature_' || lpad(CAST(e.f AS VARCHAR), 2, '0') END AS feature, "
            "CAST(1 AS DOUBLE) AS value "
            "FROM event_table e JOIN key_table k USING (k) ORDER BY e.t"
        )
        con.execute(
            "CREATE TABLE touchpoints AS SELECT k.key AS account_key, t.t AS touched_at, c.channel "
            "FROM touch_table t JOIN key_table k USING (k) JOIN channel_table c USING (c) ORDER BY t.t"
        )
    finally:
        con.close()
    return path


# --------------------------------------------------------------------------- files


def _arrow_table(frame: pd.DataFrame, spec: FrameSpec | None, fmt: str) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if spec is None:
        return table
    kinds = {c.name: c.kind for c in spec.columns}
    for i, name in enumerate(table.column_names):
        col = table.column(i)
        if not pa.types.is_timestamp(col.type):
            continue
        if kinds.get(name) == "date":
            table = table.set_column(i, name, col.cast(pa.date32()))
        elif fmt == "csv":  # ISO 8601 without fractions: 2026-01-01T09:30:00
            # cast to text is a fast kernel ("2026-01-01 09:30:00"); strftime is ~50x slower
            text = col.cast(pa.timestamp("s"), safe=False).cast(pa.string())
            table = table.set_column(i, name, pc.utf8_replace_slice(text, start=10, stop=11, replacement="T"))
    return table


def _write(frames: dict[str, tuple[pd.DataFrame, FrameSpec | None]], directory, fmt: str) -> dict[str, Path]:
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (frame, spec) in frames.items():
        table = _arrow_table(frame, spec, fmt)
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        written[name] = path
    return written


def write_portfolio(portfolio: Portfolio, directory, fmt: str = "csv") -> dict[str, Path]:
    """accounts / opportunities / tickets / owners .csv or .parquet in `directory`; dates ISO."""
    return _write(
        {
            "accounts": (portfolio.accounts, ACCOUNTS),
            "opportunities": (portfolio.opportunities, OPPORTUNITIES),
            "tickets": (portfolio.tickets, TICKETS),
            "owners": (portfolio.owners, None),
        },
        directory,
        fmt,
    )


def write_history(history: History, directory, fmt: str = "csv") -> dict[str, Path]:
    """accounts_history / tickets / opportunities_history in `directory` (design.md names)."""
    return _write(
        {
            "accounts_history": (history.accounts_history, ACCOUNTS_HISTORY),
            "tickets": (history.tickets, TICKETS),
            "opportunities_history": (history.opportunities_history, OPPORTUNITIES_HISTORY),
        },
        directory,
        fmt,
    )


def read_history(directory, fmt: str = "csv") -> tuple[History, list[str]]:
    """Read files written by `write_history` back through the canonical validator.

    Returns the history and the validator's problem lines (empty for generated data).
    """
    base = Path(directory)
    frames, problems = {}, []
    for name, spec in (("accounts_history", ACCOUNTS_HISTORY), ("tickets", TICKETS),
                       ("opportunities_history", OPPORTUNITIES_HISTORY)):
        path = base / f"{name}.{fmt}"
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]) if fmt == "csv" else pd.read_parquet(path)
        frame, report = validate_frame(raw, spec)
        problems += report.lines()
        frames[name] = frame
    dates = sorted(frames["accounts_history"]["as_of"].dt.date.unique())
    horizon = None
    return History(frames["accounts_history"], frames["tickets"], frames["opportunities_history"], dates, horizon), problems
