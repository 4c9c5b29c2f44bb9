"""Benchmarks for ktrdr_collect. Run them all with `python -m bench` from the repository root,
a subset with `python -m bench NAME...`, smaller sizes with `--quick`; see docs/benchmarks.md."""

BENCHMARKS = (
    "engine_throughput",
    "requests_minimum",
    "progress_overhead",
    "large_series",
    "control_latency",
    "huge_job",
    "many_jobs",
    "history_scale",
    "data_list",
    "startup",
    "shared_pacing",
    "cooperation",
    "yahoo_requests",
    "yahoo_exchanges",
    "eta_accuracy",
    "ib_pacing",
    "redis_pacing",
    "binance_archive",
    "peer",
)
