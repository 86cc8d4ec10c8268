"""MLflow, and only here: one experiment per study, one run per RunSpec (found again by its id),
flat identically-named params, namespaced metrics logged in batches.

Run status as the study sees it, one vocabulary for the plan, the orchestrator and the report
(:class:`Status`): ``done`` (FINISHED), ``partial`` (exists, not finished: running or killed),
``failed`` (FAILED) or ``new`` (no run). Partial and failed runs resume from their checkpoint.
Other modules read a RunSpec's run as a :class:`RunRecord` and never touch MLflow objects.

- ``store``: the tracking URI, the client, the server's health, the database, experiments;
- ``runs``: runs, their status, params, tags, metrics and files, the experiment's description and view;
- ``lease``: one writer per run;
- ``provenance``: datasets read, code version, system metrics.

The names below are the package's interface (``from pipeline import tracking``; ``tracking.start_run``).
"""
from pipeline.tracking.store import (HTTP_RETRY_DEFAULTS, TrackingError, check_server, client, default_tracking_uri,
                                     existing_default_uri, experiment_id, init_store, is_server, server_problem,
                                     store_lock)
from pipeline.tracking.runs import (CHECKPOINT_TAG, CREATE_SETTLE_S, INHERITED_TAGS, NESTED_KEY_TAG, NOTE_TAG,
                                    PARENT_SPEC_TAG, PRETRAIN_STATUS_TAG, RUN_SPEC_TAG, SHARED_VIEW_TAG, STATUSES,
                                    STUDY_PRESET_TAG, TRAINING_LAYOUT, TRANSFER_STATUS_TAG, MetricLogger, RunRecord, Status,
                                    describe_experiment, find_study_run, finish_run, last_step, log_files, log_json,
                                    log_params, mark_killed, metric_history, nested_result, recorded_metrics,
                                    reopen_run, run_status, runs_of_study, set_runs_view, set_tags, spec_runs,
                                    start_nested_run, start_run, start_study_run)
from pipeline.tracking.lease import (LEASE_RENEW_S, LEASE_STALE_S, LEASE_TAG_PREFIX, RunHeld, lease, lease_claims,
                                     lease_holder, lease_tag)
from pipeline.tracking.provenance import (DATASET_RACE_TRIES, DatasetRecord, log_datasets, lost_insert_race,
                                          source_tags, system_metrics)

__all__ = ["CHECKPOINT_TAG", "CREATE_SETTLE_S", "DATASET_RACE_TRIES", "DatasetRecord", "HTTP_RETRY_DEFAULTS",
           "INHERITED_TAGS", "LEASE_RENEW_S", "LEASE_STALE_S", "LEASE_TAG_PREFIX",
           "MetricLogger", "NESTED_KEY_TAG", "NOTE_TAG", "PARENT_SPEC_TAG", "PRETRAIN_STATUS_TAG", "RUN_SPEC_TAG",
           "RunHeld", "RunRecord", "SHARED_VIEW_TAG", "STATUSES", "STUDY_PRESET_TAG", "Status", "TRAINING_LAYOUT",
           "TRANSFER_STATUS_TAG",
           "TrackingError", "check_server", "client", "default_tracking_uri", "describe_experiment",
           "existing_default_uri", "experiment_id", "find_study_run", "finish_run", "init_store", "is_server",
           "last_step", "lease", "lease_claims", "lease_holder", "lease_tag", "log_datasets", "log_files", "log_json", "log_params",
           "lost_insert_race", "mark_killed", "metric_history", "nested_result", "recorded_metrics", "reopen_run",
           "run_status", "runs_of_study", "server_problem", "set_runs_view", "set_tags", "source_tags", "spec_runs",
           "start_nested_run", "start_run", "start_study_run", "store_lock", "system_metrics"]
