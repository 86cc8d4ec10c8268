"""Runs in MLflow: one per RunSpec (found again by its id), the study-level run of a preset and
nested (fine-tuning) runs; their status as the study sees it (:class:`Status`), read as a
:class:`RunRecord`; params, tags and metrics (in batches: :class:`MetricLogger`), files, and the
experiment's description and shared runs view."""
from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


from pipeline.tracking.provenance import source_tags
from pipeline.tracking.store import client, experiment_id, is_server, store_lock


RUN_SPEC_TAG = "run_spec_id"
STUDY_PRESET_TAG = "study_preset"  # marks the one study-level run of a preset
PRETRAIN_STATUS_TAG = "pretrain_status"  # done | partial | failed
TRANSFER_STATUS_TAG = "transfer_status"  # done | failed
CHECKPOINT_TAG = "checkpoint_uri"        # the last pretraining checkpoint
NESTED_KEY_TAG = "nested_key"            # identifies a nested (fine-tuning) run under its parent



class Status(enum.StrEnum):
    """A RunSpec's state in the study's words (equal to its string: ``Status.DONE == "done"``)."""
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"
    NEW = "new"



STATUSES = tuple(s.value for s in Status)



@dataclass(frozen=True)
class RunRecord:
    """A RunSpec's MLflow run as the study reads it."""
    run_id: str
    status: Status
    start_time: int
    pretrain_status: str | None
    transfer_status: str | None
    checkpoint_uri: str | None
    metrics: dict[str, float]

    @classmethod
    def of(cls, run) -> "RunRecord":
        tags = run.data.tags
        return cls(run_id=run.info.run_id, status=run_status(run), start_time=run.info.start_time,
                   pretrain_status=tags.get(PRETRAIN_STATUS_TAG), transfer_status=tags.get(TRANSFER_STATUS_TAG),
                   checkpoint_uri=tags.get(CHECKPOINT_TAG), metrics=dict(run.data.metrics))

    @property
    def pretrained(self) -> bool:
        """Pretraining finished and left a checkpoint: only the transfer stages may be missing."""
        return self.pretrain_status == Status.DONE and bool(self.checkpoint_uri)



def run_status(run) -> Status:
    """An MLflow run (or None) in the study's words."""
    if run is None:
        return Status.NEW
    return {"FINISHED": Status.DONE, "FAILED": Status.FAILED}.get(run.info.status, Status.PARTIAL)



def _find_or_create(tracking_uri: str, experiment: str, filter_string: str, tags: Mapping[str, str],
                    run_name: str | None, params: Mapping[str, Any]) -> str:
    """The run matching ``filter_string``, marked RUNNING again; or a new one created with its
    identifying tags in the same call (a crash can never leave a run without them) and params.
    Two processes asking at once get the same run: a SQLite store is locked meanwhile; with a
    server, each waits ``CREATE_SETTLE_S`` after creating, then all keep the oldest."""
    with store_lock(tracking_uri):
        return _find_or_create_unlocked(tracking_uri, experiment, filter_string, tags, run_name, params)



CREATE_SETTLE_S = 1.0  # longer than a create takes from its start time to its commit



def _find_or_create_unlocked(tracking_uri: str, experiment: str, filter_string: str, tags: Mapping[str, str],
                             run_name: str | None, params: Mapping[str, Any]) -> str:
    c = client(tracking_uri)
    found = c.search_runs([experiment], filter_string=filter_string, max_results=2)
    if len(found) > 1:
        raise RuntimeError(f"several MLflow runs match {filter_string!r}: {[r.info.run_id for r in found]}; "
                           "delete the extra ones in the MLflow UI")
    if found:
        if found[0].info.status != "RUNNING":
            c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    c.create_run(experiment, tags=dict(tags), run_name=run_name)
    # Another process's create at the same moment, or a create retried after a lost answer (a
    # server's response dropped by the network), makes two runs: keep the first, delete the others.
    if is_server(tracking_uri):
        time.sleep(CREATE_SETTLE_S)
    made = sorted(c.search_runs([experiment], filter_string=filter_string, max_results=10),
                  key=lambda r: (r.info.start_time, r.info.run_id))
    for extra in made[1:]:
        c.delete_run(extra.info.run_id)
    log_params(tracking_uri, made[0].info.run_id, params)
    return made[0].info.run_id



def start_run(tracking_uri: str, study: str, run_spec_id: str, *, tags: Mapping[str, Any],
              params: Mapping[str, Any], run_name: str | None = None, artifact_root: str | None = None,
              parent_run_id: str | None = None) -> str:
    """The one MLflow run of this RunSpec in the study's experiment (nested under ``parent_run_id``,
    the study-level run, when given)."""
    all_tags = {RUN_SPEC_TAG: run_spec_id, "study": study, **{k: str(v) for k, v in tags.items()},
                **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    return _find_or_create(tracking_uri, experiment_id(tracking_uri, study, artifact_root),
                           f"tags.{RUN_SPEC_TAG} = '{run_spec_id}'", all_tags, run_name, params)



PARENT_SPEC_TAG = "parent_run_spec_id"  # a nested run's parent's RunSpec (run_spec_id marks RunSpec runs only)
INHERITED_TAGS = ("model", "family", "subset", "length", "code_version", "git_dirty")
INHERITED_PREFIX = "mlflow.source."   # where the code came from: the parent's commit, also on its trials



def start_nested_run(tracking_uri: str, parent_run_id: str, key: str, params: Mapping[str, Any],
                     run_name: str | None = None, description: str | None = None) -> str:
    """A child run of ``parent_run_id`` (shown nested in the MLflow UI), found again by ``key`` so
    that an evaluation that is re-run or resumed never makes a second one. It carries its
    parent's model, family, subset and length tags and RunSpec id (``parent_run_spec_id``), so that
    a filter on a model shows its trials too, while its params and metrics have names of their own;
    and its parent's source tags (the commit). ``description``: its page's description."""
    parent = client(tracking_uri).get_run(parent_run_id)
    tags = {"mlflow.parentRunId": parent_run_id, NESTED_KEY_TAG: key,
            **{k: v for k, v in parent.data.tags.items() if k in INHERITED_TAGS or k.startswith(INHERITED_PREFIX)},
            **({NOTE_TAG: description} if description else {}),
            **({PARENT_SPEC_TAG: parent.data.tags[RUN_SPEC_TAG]} if RUN_SPEC_TAG in parent.data.tags else {})}
    return _find_or_create(tracking_uri, parent.info.experiment_id,
                           f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.{NESTED_KEY_TAG} = '{key}'",
                           tags, run_name or key, params)



def start_study_run(tracking_uri: str, study: str, preset: str, *, params: Mapping[str, Any],
                    artifact_root: str | None = None) -> str:
    """The one study-level run of ``study``/``preset``: it groups the study's runs (they are
    created as its children) and holds the report."""
    return _find_or_create(tracking_uri, experiment_id(tracking_uri, study, artifact_root),
                           f"tags.{STUDY_PRESET_TAG} = '{preset}'", {STUDY_PRESET_TAG: preset, "study": study,
                                                                     **source_tags()},
                           f"study {study} / {preset}", params)



def find_study_run(tracking_uri: str, study: str, preset: str) -> str | None:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    found = [] if exp is None else c.search_runs([exp.experiment_id], f"tags.{STUDY_PRESET_TAG} = '{preset}'",
                                                  max_results=1)
    return found[0].info.run_id if found else None



def nested_result(tracking_uri: str, parent_run_id: str, key: str, metric: str) -> float | None:
    """The recorded ``metric`` of a finished nested run, or None (not run, or interrupted)."""
    c = client(tracking_uri)
    experiment = c.get_run(parent_run_id).info.experiment_id
    found = c.search_runs([experiment], max_results=1, filter_string=(
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.{NESTED_KEY_TAG} = '{key}' and "
        "attributes.status = 'FINISHED'"))
    return found[0].data.metrics.get(metric) if found else None



def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client(tracking_uri).log_batch(run_id, params=items[i:i + 100])



def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag
    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])



def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)



def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client(tracking_uri).get_metric_history(run_id, key)]



def last_step(tracking_uri: str, run_id: str, key: str) -> int:
    """The last step logged for ``key`` (-1 when none): a run resumed from an earlier checkpoint
    repeats the steps after it exactly, and does not log them twice."""
    return max((step for step, _ in metric_history(tracking_uri, run_id, key)), default=-1)



class MetricLogger:
    """Buffers metrics and sends them with ``log_batch`` (about 30x faster than one call per
    value). ``flush`` is called at every log interval and at the end."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 200, logged_through: int = -1):
        self.tracking_uri, self.run_id, self.flush_every = tracking_uri, run_id, flush_every
        self.logged_through = logged_through  # steps up to here are in MLflow already: not logged again
        self._pending: list = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric
        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):  # MLflow's per-batch limit
            client(self.tracking_uri).log_batch(self.run_id, metrics=pending[i:i + 1000])

    def log_now(self, step: int, metrics: Mapping[str, float]) -> None:
        self.log(step, metrics)
        self.flush()



def runs_of_study(tracking_uri: str, study: str) -> Iterable:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(study)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=50_000)



def spec_runs(tracking_uri: str, study: str) -> dict[str, RunRecord]:
    """{RunSpec id: its run} from one search of the study's experiment; fine-tuning trials
    (nested) and the study-level run are not RunSpec runs. Tracking never makes two runs of one
    RunSpec; if something else did, the latest counts."""
    found: dict[str, RunRecord] = {}
    for run in runs_of_study(tracking_uri, study):
        spec_id = run.data.tags.get(RUN_SPEC_TAG)
        if spec_id is None or NESTED_KEY_TAG in run.data.tags:
            continue
        if spec_id not in found or run.info.start_time > found[spec_id].start_time:
            found[spec_id] = RunRecord.of(run)
    return found



def mark_killed(tracking_uri: str, study: str, spec_ids: set[str], study_run_id: str | None = None) -> int:
    """After Ctrl-C: the study's unfinished runs among ``spec_ids`` (and its study run) become
    KILLED, not RUNNING forever; the next invocation resumes them. Returns how many runs."""
    killed = [r.run_id for spec_id, r in spec_runs(tracking_uri, study).items()
              if spec_id in spec_ids and r.status == Status.PARTIAL]
    for run_id in [*killed, *([study_run_id] if study_run_id else [])]:
        finish_run(tracking_uri, run_id, "KILLED")
    return len(killed)



def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (its transfer stages are about to run)."""
    client(tracking_uri).update_run(run_id, status="RUNNING")



def recorded_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(client(tracking_uri).get_run(run_id).data.metrics)



def log_files(tracking_uri: str, run_id: str, paths: Iterable[str | os.PathLike], artifact_path: str) -> None:
    """Files as artifacts of a run, under ``artifact_path``."""
    for path in paths:
        client(tracking_uri).log_artifact(run_id, str(path), artifact_path=artifact_path)



def log_json(tracking_uri: str, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    """A mapping as a JSON artifact of a run (written again on a resumed run: the same content)."""
    client(tracking_uri).log_dict(run_id, dict(data), artifact_file)



NOTE_TAG = "mlflow.note.content"   # what MLflow's UI shows as a run's or an experiment's description



def describe_experiment(tracking_uri: str, study: str, text: str) -> None:
    """The study's experiment description (shown above its runs table), unless it has one: a
    user's own is kept."""
    experiment = client(tracking_uri).get_experiment(experiment_id(tracking_uri, study))
    if NOTE_TAG not in experiment.tags:
        client(tracking_uri).set_experiment_tag(experiment.experiment_id, NOTE_TAG, text)



# MLflow 3.17's UI opens every experiment in its GenAI layout (traces, latency; runs behind a "Model
# training" toggle, remembered per browser) unless a link says otherwise: the experiment's kind tag
# does not change it while that toggle is shown.
TRAINING_LAYOUT = "workflowType=machine_learning"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow 3.15+: a runs-table view, opened by ?viewStateShareKey=KEY



def set_runs_view(tracking_uri: str, study: str, key: str, *, params: Iterable[str], metrics: Iterable[str],
                  order_by: str) -> str:
    """A shared view of the study's runs table, stored on its experiment as MLflow's UI stores the
    views it shares: the pretraining runs (those with a ``model`` param: not the fine-tuning trials
    nor the study run), these params and metrics as columns, sorted by the metric ``order_by``. The
    UI opens it at ``#/experiments/<id>/runs?viewStateShareKey=<key>&workflowType=machine_learning``,
    which is returned."""
    import json
    experiment = experiment_id(tracking_uri, study)
    state = {"searchFilter": "params.model != ''", "orderByKey": f"metrics.`{order_by}`", "orderByAsc": True,
             "selectedColumns": [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics]}
    client(tracking_uri).set_experiment_tag(experiment, SHARED_VIEW_TAG + key, json.dumps(state))
    return f"#/experiments/{experiment}/runs?viewStateShareKey={key}&{TRAINING_LAYOUT}"
