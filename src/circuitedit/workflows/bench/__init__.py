"""`circuitedit bench`: many single edits, every method, one table with confidence intervals.

Protocol: facts are taken in file order and kept only if the unedited model knows them (its
greedy continuation contains the true object; for Sports Facts the true sport ranks first of
the three). Each kept fact is edited on a fresh copy of the base model by every method (single-
edit protocol), measured, and appended to OUT/results.jsonl at once (one flushed line per
finished edit), so `--resume` redoes nothing that finished. OUT/summary.{json,md} hold each
method's mean and 95% bootstrap interval per metric, OUT/summary.png a bar chart.
"""


from ...render.bench import SUMMARY_METRICS, summary_markdown
from .config import (
    DEFAULT_LOCALIZER,
    DEFAULT_METHODS,
    RANDOM_LOCALIZER,
    BenchConfig,
    BenchError,
    Workers,
)
from .measures import fact_measures, neighbourhood_specificity
from .plan import label_for, plan, random_components
from .results import append_result, read_results
from .run import resummarize, run_bench
from .selection import Selection, knows, select_facts
from .summary import aggregate, bootstrap_interval, write_summary

__all__ = ["DEFAULT_LOCALIZER", "DEFAULT_METHODS", "RANDOM_LOCALIZER", "SUMMARY_METRICS", "BenchConfig", "BenchError",
           "Selection", "aggregate", "append_result", "bootstrap_interval", "fact_measures", "knows", "label_for",
           "neighbourhood_specificity", "plan", "random_components", "read_results", "resummarize", "run_bench", "select_facts",
           "summary_markdown", "Workers", "write_summary"]
