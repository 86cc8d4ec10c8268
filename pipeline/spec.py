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
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models import model_spec
from pipeline.compute import parse_count

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
    compile: bool = False


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
    def id(self) -> str:
        payload = self.model_dump(mode="json", exclude={"study"})
        payload["model"] = model_spec(self.model).to_dict() if isinstance(self.model, dict) else self.model
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:12]

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

    def subset_selector(self) -> dict[str, Any]:
        """Keyword arguments for ``pipeline.data`` (fraction= or count=)."""
        if self.subset == "full":
            return {"fraction": 1.0}
        if isinstance(self.subset, float):
            return {"fraction": self.subset}
        return {"count": parse_count(self.subset)}

    def total_steps(self, subset_rows: int) -> int:
        """Optimizer steps: given, or ceil(epochs x images / batch). Images seen = steps x batch."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * subset_rows / self.recipe.batch_size))
