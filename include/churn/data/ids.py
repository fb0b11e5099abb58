"""The customer-id contract: what every store and export can hold, checked (and quarantined) at validation.

An id is 1 to ``MAX_ID_LENGTH`` characters of printable text without a double quote or a backslash: no
control characters (C0, DEL, C1), no Unicode line or paragraph separator, no surrounding blanks (ingest
strips them). Such an id is a Redis key or hash field as it is, a JSON string without escaping, a
Postgres ``text`` value and a CSV cell (exports still neutralise a leading ``= + - @``). Rows whose id
breaks the contract are quarantined by validation with the reason, so a publish never meets one: before
this check one such id made the Redis publish refuse the whole batch after Postgres had switched.
"""

from __future__ import annotations

import pandas as pd

MAX_ID_LENGTH = 128
# Characters no store or reader handles verbatim: C0 controls, '"', '\\', DEL, C1 controls, U+2028/U+2029.
FORBIDDEN = r'[\x00-\x1f"\\\x7f-\x9f\u2028\u2029]'


def id_violations(ids: pd.Series) -> pd.Series:
    """Per row, why its id breaks the contract (None where it holds; a missing id is the not-null check's)."""
    text = ids.astype("string")
    present = text.notna()
    reasons = pd.Series([None] * len(ids), index=ids.index, dtype=object)
    length = text.str.len()
    reasons[present & (length > MAX_ID_LENGTH)] = f"id longer than {MAX_ID_LENGTH} characters"
    reasons[present & (length == 0)] = "id is empty"
    reasons[present & (text != text.str.strip())] = "id has leading or trailing blanks"
    bad_chars = present & text.str.contains(FORBIDDEN, regex=True).fillna(False).astype(bool)
    reasons[bad_chars] = "id holds a quote, backslash or control character"
    return reasons
