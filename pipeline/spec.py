"""What a run is, as validated plain data: ``Recipe`` (how to pretrain) and ``RunSpec``
(model x dataset subset x length x recipe x seed) with a stable id.

The id is a hash of everything that changes the result, so a re-submitted study finds its runs
again. The dataset's *name* is hashed, not its location: moving data from a laptop folder to
``s3://`` does not make a run new.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from models import model_spec
from pipeline.compute import parse_count
from pipeline.data.synth import SynthSpec

# Table 3 of the paper (JFT-300M rows): base learning rates for Adam, batch 4096.
TABLE3_BASE_LR = {
    "ViT-B/16": 8e-4, "ViT-B/32": 8e-4, "R50+ViT-B/16": 8e-4, "R50+ViT-B/32": 8e-4,
    "ViT-L/32": 6e-4, "ViT-L/16": 4e-4, "R50+ViT-L/16": 4e-4, "ViT-H/14": 3e-4,
    "R50x1": 1e-3, "R50x2": 1e-3, "R101x1": 8e-4, "R152x1": 6e-4, "R152x2": 6e-4,
    "R50+ViT-L/32": 2e-4,
}
# The paper states no LR for R200x3 (nor for R152x2 at 14 epochs, which uses R152x2's entry).
# Our choice, recorded as base_lr_source="choice": the LR of the deepest stated BiT model.
CHOSEN_BASE_LR = {"R200x3": 6e-4}


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Recipe(Frozen):
    """Pretraining recipe; defaults are Table 3's JFT recipe."""
    base_lr: float | None = Field(None, gt=0, description="None: Table 3's value for the model")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0, description="decoupled (AdamW-style)")
    warmup_steps: int = Field(10_000, ge=0)
    decay: Literal["linear", "cosine"] = "linear"
    grad_clip: float | None = Field(1.0, gt=0, description="global-norm clipping; None disables")
    batch_size: int = Field(4096, ge=1, description="global batch, independent of the worker count")
    micro_batch_size: int | None = Field(None, ge=1, description="per-device batch; smaller than a "
                                         "worker's share means gradient accumulation")
    image_size: int = Field(224, ge=8)
    min_crop_area: float = Field(0.05, gt=0, le=1, description="inception crop: smallest area fraction "
                                 "(paper/big_vision 0.05; 1.0 = flip only, for tiny images)")
    dropout: float = Field(0.0, ge=0, lt=1)
    head_bias_init: float = Field(0.0, description="initial classifier bias (e.g. -10 for sigmoid on many classes)")
    val_every: int = Field(1000, ge=1, description="steps between validations")
    val_images: int | None = Field(None, ge=1, description="cap on validation images (None: whole split)")
    checkpoint_every: int = Field(1000, ge=1, description="steps between checkpoints")
    log_every: int = Field(50, ge=1, description="steps between metric logs")
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _no_compile(cls, data):
        """``compile`` was a recipe field; it is a launch option now (it does not change what is
        learned): records that say ``compile: false`` still read, ``true`` says where it went."""
        if isinstance(data, dict) and "compile" in data:
            data = dict(data)
            if data.pop("compile"):
                raise ValueError("compile is no longer a recipe field (it does not change what is learned): pass "
                                 "--compile on to python -m pipeline.pretrain or python -m pipeline.study")
        return data


class RunSpec(Frozen):
    """One pretraining run of a study."""
    study: str = "adhoc"
    model: Union[str, dict[str, Any]]
    dataset: str = Field(description="dataset name (its manifest's 'name'), not its location")
    subset: Union[str, float] = Field("full", description="'full', a count ('30M', '9000') or a fraction in (0, 1]")
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, ge=1)
    recipe: Recipe = Recipe()
    seed: int = 0

    @field_validator("model")
    @classmethod
    def _known_model(cls, value):
        model_spec(value)  # raises with the list of valid names
        return value

    @field_validator("subset")
    @classmethod
    def _valid_subset(cls, value):
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, float) and not 0 < value <= 1:
                raise ValueError(f"subset fraction must be in (0, 1], got {value}")
            return value if isinstance(value, float) else str(value)
        if value != "full":
            parse_count(value)
        return value

    @model_validator(mode="after")
    def _one_length(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'epochs' or 'steps'")
        return self

    @property
    def model_name(self) -> str:
        return model_spec(self.model).name

    @property
    def family(self) -> str:
        return model_spec(self.model).family

    @property
    def length(self) -> str:
        """How long it pretrains, as the study file says it: "7 epochs" or "400 steps"."""
        return f"{self.epochs:g} epochs" if self.epochs is not None else f"{self.steps} steps"

    @property
    def label(self) -> str:
        """The run's name for people (MLflow run name, console lines): model / subset / length."""
        return f"{self.model_name} / {self.subset} / {self.length}"

    @property
    def id(self) -> str:
        payload = self.model_dump(mode="json", exclude={"study"})
        payload["recipe"]["compile"] = False  # a recipe field until issue 30: kept so that ids stay the same
        payload["model"] = model_spec(self.model).to_dict() if isinstance(self.model, dict) else self.model
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:12]

    @property
    def replicate_id(self) -> str:
        """The id this run has at seed 0: the runs that differ only by their seed (replicates) share it."""
        return self.model_copy(update={"seed": 0}).id

    def base_lr(self) -> tuple[float, str]:
        """(learning rate, where it came from: 'recipe' | 'table3' | 'choice')."""
        if self.recipe.base_lr is not None:
            return self.recipe.base_lr, "recipe"
        name = self.model_name
        if name in TABLE3_BASE_LR:
            return TABLE3_BASE_LR[name], "table3"
        if name in CHOSEN_BASE_LR:
            return CHOSEN_BASE_LR[name], "choice"
        raise ValueError(f"Table 3 gives no learning rate for {name}: set recipe.base_lr")

    def subset_selector(self, full_rows: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``pipeline.data`` (fraction= or count=). Given the full split's
        usable rows, a fraction f becomes the round(f x rows) rows of lowest priority: exactly the
        size the plan counts (a fraction's priority threshold alone gives only about that many)."""
        if self.subset == "full":
            return {"fraction": 1.0}
        if isinstance(self.subset, float):
            return {"fraction": self.subset} if full_rows is None else {"count": round(self.subset * full_rows)}
        return {"count": parse_count(self.subset)}

    def total_steps(self, subset_rows: int) -> int:
        """Optimizer steps: given, or ceil(epochs x images / batch). Images seen = steps x batch."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * subset_rows / self.recipe.batch_size))


# ----------------------------------------------------------------------------- studies

class DatasetRef(Frozen):
    """The pretraining data of a study: a name (hashed into run ids), the size of its full set
    (for planning without the data present), and, for the built-in synthetic data, how to make it."""
    name: str
    images: Union[str, int, None] = Field(None, description="rows of the full set, e.g. 303M")
    synth: SynthSpec | None = Field(None, description="how to make the built-in synthetic data")

    num_classes: int | None = Field(None, ge=1, description="label classes (the pretraining head); None: the "
                                    "synthetic data's, else the 1000-class convention of public compute tables")

    @field_validator("images")
    @classmethod
    def _count(cls, value):
        if value is not None and parse_count(value) < 1:
            raise ValueError(f"images is the size of the full set: 1 or more, got {value!r}")
        return value

    @property
    def head_classes(self) -> int:
        """Classes of the head whose compute the plan counts (what pretraining logs, when known)."""
        return self.num_classes or (self.synth.classes if self.synth else None) or 1000


class TransferPlan(Frozen):
    fewshot: list[str] = Field(default_factory=list, description="downstream datasets for few-shot probes")
    shots: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 5, 10, 25], min_length=1)
    finetune: list[str] = Field(default_factory=list, description="downstream datasets to fine-tune on")
    finetune_steps: int | None = Field(None, ge=1, description="None: Table 4's steps per dataset")
    finetune_batch_size: int | None = Field(None, ge=1)
    finetune_lrs: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1)
    min_crop_area: float | None = Field(None, gt=0, le=1)
    protocols: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "further transfer protocols registered in pipeline/transfer/registry.py: {name: {datasets: [...], "
        "its settings}}"))


class RunEntry(Frozen):
    model: Union[str, dict[str, Any]]
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, ge=1)
    recipe: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's recipe")

    _known_model = field_validator("model")(RunSpec._known_model.__func__)

    @model_validator(mode="after")
    def _one_length(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of 'epochs' or 'steps'")
        unknown = set(self.recipe) - set(Recipe.model_fields)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; allowed: {sorted(Recipe.model_fields)}")
        return self


class CandidateGrid(Frozen):
    """Runs that could be added to a preset (``python -m pipeline.study --suggest``): entries like
    ``runs:`` (model + steps or epochs), crossed with ``subsets`` (None: the preset's) and its seeds."""
    runs: list[RunEntry] = Field(min_length=1)
    subsets: list[Union[str, float]] | None = None

    @field_validator("subsets")
    @classmethod
    def _valid_subsets(cls, values):
        return None if values is None else [RunSpec._valid_subset(v) for v in values]


class Preset(Frozen):
    description: str = ""
    dataset: DatasetRef
    subsets: list[Union[str, float]] = Field(default_factory=lambda: ["full"])
    recipe: Recipe = Recipe()
    runs: list[RunEntry] = Field(min_length=1, description="at least one run")
    seeds: list[int] = Field(default_factory=lambda: [0])
    transfer: TransferPlan = TransferPlan()
    candidates: CandidateGrid | None = Field(None, description="runs --suggest chooses among (none: no advice)")
    forecast: list[RunEntry] = Field(default_factory=list, description=(
        "configurations not run whose accuracy the report forecasts (model + epochs or steps, as runs:), "
        "beside the preset's runs not yet finished"))

    @field_validator("subsets")
    @classmethod
    def _valid_subsets(cls, values):
        return [RunSpec._valid_subset(v) for v in values]

    def candidate_preset(self) -> "Preset | None":
        """This preset with its candidate grid as its runs (and subsets), to expand and plan them
        exactly as runs; None without candidates."""
        if self.candidates is None:
            return None
        return self.model_copy(update={"runs": self.candidates.runs, "candidates": None, "forecast": [],
                                       "subsets": self.candidates.subsets or self.subsets})


class Study(Frozen):
    name: str
    title: str = ""
    presets: dict[str, Preset]
    _file: Path | None = PrivateAttr(None)   # the file it was loaded from (load_study)

    @property
    def file(self) -> Path | None:
        return self._file

    def preset(self, name: str) -> Preset:
        if name not in self.presets:
            raise ValueError(f"study {self.name!r} has no preset {name!r}; its presets are {sorted(self.presets)}")
        return self.presets[name]

    def expand(self, preset: str) -> list[RunSpec]:
        """Every run of a preset: run entries x subsets x seeds, in file order."""
        p = self.preset(preset)
        specs = []
        for entry in p.runs:
            recipe = Recipe(**{**p.recipe.model_dump(), **entry.recipe})
            for subset in p.subsets:
                for seed in p.seeds:
                    specs.append(RunSpec(study=self.name, model=entry.model, dataset=p.dataset.name, subset=subset,
                                         epochs=entry.epochs, steps=entry.steps, recipe=recipe, seed=seed))
        return specs

    def with_candidates(self, preset: str) -> "Study | None":
        """This study with preset ``preset``'s runs replaced by its candidate grid (``expand`` and
        ``planning.plan`` then give the candidates' RunSpecs and costs); None without candidates."""
        grid = self.preset(preset).candidate_preset()
        return None if grid is None else self.model_copy(update={"presets": {**self.presets, preset: grid}})


LENGTH = re.compile(r"^(?P<n>\d+(\.\d+)?)\s*(?P<unit>ep|epochs?|steps?)$")


def named_entry(text: str, p: Preset) -> RunEntry:
    """``MODEL@LENGTH`` as a run entry: MODEL a registry name (``ViT-H/14``) or the name of a custom
    model of the preset's runs (its shape and recipe overrides are taken from that run); LENGTH
    ``14ep`` / ``14epochs`` or ``800steps``."""
    model, sep, length = text.rpartition("@")
    match = LENGTH.match(length.strip().lower())
    if not sep or not model.strip() or not match:
        raise ValueError(f"--forecast {text!r}: give MODEL@LENGTH, e.g. 'ViT-H/14@14ep' or 'ViT-micro-M@800steps'")
    n, unit = match["n"], match["unit"]
    length_field = {"epochs": float(n)} if unit.startswith("ep") else {"steps": int(float(n))}
    model = model.strip()
    for entry in p.runs:
        if isinstance(entry.model, dict) and entry.model.get("name") == model:
            return RunEntry(model=entry.model, recipe=entry.recipe, **length_field)
    try:
        return RunEntry(model=model, **length_field)
    except ValidationError as err:
        custom = sorted({e.model["name"] for e in p.runs if isinstance(e.model, dict)})
        said = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"--forecast {text!r}: {said}" + (f" (the preset's own models: {', '.join(custom)})"
                                                          if custom else "")) from None


def subset_images(subset: Union[str, float], full_images: int | None) -> int | None:
    """Rows of a subset for planning: a count as given, a fraction or 'full' of the full set."""
    if subset == "full":
        return full_images
    if isinstance(subset, float):
        return None if full_images is None else round(subset * full_images)
    return parse_count(subset)


def _format_error(err, source: str) -> str:
    lines = [f"{source}: invalid study"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        got = "" if isinstance(e["input"], dict) else f" (got {reprlib.repr(e['input'])})"
        lines.append(f"  {where}: {e['msg']}{got}")
    return "\n".join(lines)


MAX_VALUES = 100_000   # a study file is hundreds of values; YAML aliases can make billions out of ten lines


def expanded_size(data: Any) -> float:
    """How many values ``data`` holds once its YAML aliases are expanded (each shared object counted
    every time it is referenced), computed once per distinct object (linear in the file, and without
    recursion: a deeply nested file is measured too)."""
    sizes: dict[int, float] = {}
    open_: set[int] = set()   # objects whose children are being measured: one met again is a cycle
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        obj, children_done = stack.pop()
        if id(obj) in sizes:
            continue
        children = list(obj.values()) if isinstance(obj, dict) else obj if isinstance(obj, list) else []
        if children_done or not children:
            sizes[id(obj)] = 1 + sum(sizes[id(child)] for child in children)
            open_.discard(id(obj))
        else:
            open_.add(id(obj))
            stack.append((obj, True))
            for child in children:
                if id(child) in open_:
                    return math.inf     # an alias inside itself (&a [*a]): endless once expanded
                if id(child) not in sizes:
                    stack.append((child, False))
    return sizes[id(data)]


def load_study(name_or_path: str) -> Study:
    """A study by name (``studies/<name>.yaml`` shipped with the package) or by file path.
    Errors name the file, the field and what is allowed."""
    import yaml
    from importlib import resources
    from pydantic import ValidationError
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(str(resources.files("studies") / f"{name_or_path}.yaml"))
        if not path.is_file():
            raise ValueError(f"no study {name_or_path!r}; available: {', '.join(list_studies())} "
                             "(or give the path of a .yaml file)")
    if not path.is_file():
        raise ValueError(f"study file {path} does not exist (built-in studies: {', '.join(list_studies())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a study file is a mapping with 'name' and 'presets'")
    if expanded_size(data) > MAX_VALUES:
        raise ValueError(f"{path}: its YAML aliases (*name) expand to more than {MAX_VALUES:,} values; a study file "
                         "holds hundreds: write the repeated parts out, or alias them less deeply")
    try:
        study = Study.model_validate(data)
        for preset in study.presets:
            _once_each(study.expand(preset), f"{path}: preset {preset!r}")  # model names, subsets, lengths
            if study.presets[preset].candidates is not None:
                study.with_candidates(preset).expand(preset)   # and of every candidate
    except ValidationError as err:
        raise ValueError(_format_error(err, str(path))) from None
    study._file = path
    return study


def _once_each(specs: list[RunSpec], where: str) -> None:
    """A run listed twice would be launched twice (one copy refused as held by another study)
    and counted twice in the report."""
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise ValueError(f"{where} lists the run {spec.label} twice (RunSpec {spec.id}): remove one of them")
        seen.add(spec.id)


def list_studies() -> list[str]:
    from importlib import resources
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("studies").iterdir()
                  if p.name.endswith(".yaml"))
