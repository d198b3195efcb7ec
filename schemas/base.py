"""The strict base model every schema derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and validates defaults and assignments."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)
