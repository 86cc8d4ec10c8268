"""What every transfer protocol shares: the :class:`Target` of an evaluation (a checkpoint and
where its results go) and the :class:`Evaluator` interface a protocol implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.spec import TransferPlan


@dataclass(frozen=True)
class Target:
    """A checkpoint (or a model in memory) to evaluate, and where its results go: metrics land on the MLflow run
    ``run_id`` (the pretraining run; fine-tuning trials nest under it), Ray Tune folders and
    feature caches under ``storage``."""
    checkpoint: str
    storage: str
    tracking_uri: str | None = None
    run_id: str | None = None
    timm_name: str | None = None        # the checkpoint is a timm state dict of this model
    use_gpu: bool = False
    on_ray: bool = False                # few-shot probes as Ray tasks holding a CPU (or GPU), like trials
    max_concurrent: int | None = None   # fine-tuning trials at once (None: what fits)
    label: str = ""                     # the run's name on the console (RunSpec.label); "" : the checkpoint's
    # the weights themselves, in this process (a run's final model at the end of its pretraining:
    # evaluated where it is, no checkpoint loaded in another process); ``checkpoint`` then only names them
    model: Any = None

    @property
    def name(self) -> str:
        """What console lines about this target are named by."""
        return self.label or f"checkpoint {self.checkpoint}"

    @property
    def recorded(self) -> bool:
        return bool(self.tracking_uri and self.run_id)


class Evaluator(ABC):
    """One transfer protocol (as big_vision's evaluators): built from the study file's
    ``transfer`` section, it evaluates a :class:`Target` on each of its ``datasets`` and returns
    metrics named ``<protocol>/<dataset>/...``. ``metric_keys`` are the metrics whose presence on
    the run means that dataset is done (a resumed study skips it)."""
    name: ClassVar[str]
    datasets: tuple[str, ...]

    @classmethod
    def from_plan(cls, plan: TransferPlan) -> "Evaluator | None":
        """This protocol as the study file configures it (None: not used). The default reads
        ``transfer.protocols.<name>``: {datasets: [...], <settings of the class>}."""
        config: dict[str, Any] | None = plan.protocols.get(cls.name)
        return None if config is None else cls(**config)

    @abstractmethod
    def metric_keys(self, dataset: str) -> list[str]:
        ...

    @abstractmethod
    def run(self, target: Target, dataset: str, path: str) -> dict[str, float]:
        ...
