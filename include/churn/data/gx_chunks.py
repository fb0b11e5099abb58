"""Great Expectations 1.x over a snapshot read in chunks: one suite, results added up into one.

:class:`ChunkValidator` runs the suite's row-level (and, on the first chunk, schema) expectations on
each pandas chunk; :func:`merge_chunk_result` adds each expectation's chunk results up (counts, a
short list of unexpected values) and :func:`merged_result` turns the totals back into one GX result
for the stored validation result and Data Docs. Table-level checks that need the whole batch (row
count, a column's min / max) are judged on figures streamed over every chunk
(:data:`STREAMED_BATCH_TYPES`, :func:`within_bounds`).
"""

from __future__ import annotations

import json

import pandas as pd

# Table-level expectations judged on figures streamed over every chunk (the GX result is built from them);
# the schema checks are judged by GX on the first chunk (every chunk has the file's columns).
class ValidationFailed(RuntimeError):
    """The batch failed validation; nothing downstream may train on it or publish from it."""


STREAMED_BATCH_TYPES = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal",
                         "expect_column_max_to_be_between", "expect_column_min_to_be_between")
SCHEMA_BATCH_TYPES = ("expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
                       "expect_table_column_count_to_equal", "expect_table_column_count_to_be_between",
                       "expect_column_to_exist")
PARTIAL_LIST = 20  # unexpected values kept per expectation in the stored result (GX's own partial size)


class ChunkValidator:
    """One ephemeral GX context and suite, validating pandas chunks of one snapshot."""

    def __init__(self, suite_def: dict, dataset: str) -> None:
        import great_expectations as gx  # heavy import: only inside the task


        unsupported = [e["type"] for e in suite_def["expectations"]
                       if (e.get("meta") or {}).get("level", "batch") == "batch"
                       and e["type"] not in STREAMED_BATCH_TYPES + SCHEMA_BATCH_TYPES]
        if unsupported:
            raise ValidationFailed(
                f"suite {suite_def['name']}: batch-level expectations {unsupported} cannot be judged chunk by chunk; "
                f"use row-level expectations (meta.level = row) or one of {STREAMED_BATCH_TYPES + SCHEMA_BATCH_TYPES}")
        context = gx.get_context(mode="ephemeral")
        suite = context.suites.add(gx.ExpectationSuite(name=suite_def["name"], expectations=suite_def["expectations"]))
        self.streamed = [e for e in suite.expectations if e.expectation_type in STREAMED_BATCH_TYPES]
        per_chunk = [e for e in suite.expectations if e.expectation_type not in STREAMED_BATCH_TYPES]
        rows_only = [e for e in per_chunk if e.expectation_type not in SCHEMA_BATCH_TYPES]
        source = context.data_sources.add_pandas(f"{dataset}_source")
        self._batches = source.add_dataframe_asset(dataset).add_batch_definition_whole_dataframe("whole")
        # The first chunk also answers the schema checks (every chunk has the file's columns).
        self._suites = {name: gx.ExpectationSuite(name=f"{suite_def['name']}__{name}",
                                                  expectations=[e.configuration.to_json_dict() for e in exps])
                        for name, exps in (("first", per_chunk), ("rest", rows_only))}
        self.template = None

    def validate(self, frame: pd.DataFrame, first: bool):
        """GX results of one chunk (index = global row numbers); schema checks only on the first chunk."""
        suite = self._suites["first" if first else "rest"]
        if not suite.expectations:
            return []
        batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
        if self.template is None:
            self.template = result
        return result.results

    def streamed_result(self, expectation, observed, success: bool):
        """A GX result for a table-level check judged on streamed figures."""
        from great_expectations.core import ExpectationValidationResult

        return ExpectationValidationResult(success=success, expectation_config=expectation.configuration,
                                           result={"observed_value": observed})


def merge_chunk_result(total: dict, item, rows: int) -> None:
    """Add one chunk's result of a row-level expectation into the running total."""
    result = item.result or {}
    kwargs = {k: v for k, v in item.expectation_config.kwargs.items() if k != "batch_id"}
    entry = total.setdefault(item.expectation_config.type + json.dumps(kwargs, default=str, sort_keys=True),
                             {"config": item.expectation_config, "success": True, "element_count": 0,
                              "unexpected_count": 0, "missing_count": 0, "partial_unexpected_list": [],
                              "observed_value": None, "row_level": "unexpected_index_list" in result})
    entry["success"] = entry["success"] and bool(item.success)
    entry["element_count"] += int(result.get("element_count") or rows)
    entry["unexpected_count"] += int(result.get("unexpected_count") or 0)
    entry["missing_count"] += int(result.get("missing_count") or 0)
    room = PARTIAL_LIST - len(entry["partial_unexpected_list"])
    if room > 0:
        entry["partial_unexpected_list"] += list(result.get("partial_unexpected_list") or [])[:room]
    if "observed_value" in result and entry["observed_value"] is None:
        entry["observed_value"] = result["observed_value"]


def within_bounds(observed, kwargs: dict) -> bool:
    """Whether ``observed`` lies within the expectation's bounds (``value`` for *_to_equal)."""
    if observed is None:
        return False
    if "value" in kwargs:
        return observed == kwargs["value"]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if isinstance(observed, pd.Timestamp):
        low = None if low is None else pd.Timestamp(low)
        high = None if high is None else pd.Timestamp(high)
        if observed.tzinfo is None:
            low = None if low is None else low.tz_localize(None) if low.tzinfo else low
            high = None if high is None else high.tz_localize(None) if high.tzinfo else high
    return (low is None or observed >= low) and (high is None or observed <= high)


def jsonable(value):
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def merged_result(result_type, entry: dict, repeated: dict[str, set[str]]):
    """One GX result for an expectation evaluated on every chunk (counts added up; partial list kept short)."""
    config = entry["config"]
    unexpected = entry["unexpected_count"]
    success = entry["success"]
    column = config.kwargs.get("column")
    if config.type == "expect_column_values_to_be_unique" and repeated.get(column):
        success = False
        unexpected = max(unexpected, len(repeated[column]))
        room = PARTIAL_LIST - len(entry["partial_unexpected_list"])
        entry["partial_unexpected_list"] += sorted(repeated[column])[:max(room, 0)]
    result = {"observed_value": entry["observed_value"]} if not entry["row_level"] else {
        "element_count": entry["element_count"], "missing_count": entry["missing_count"],
        "unexpected_count": unexpected,
        "unexpected_percent": 100.0 * unexpected / max(entry["element_count"] - entry["missing_count"], 1),
        "partial_unexpected_list": entry["partial_unexpected_list"],
    }
    return result_type(success=success, expectation_config=config, result=result)
