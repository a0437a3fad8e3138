"""Hardware profile schema (pydantic v2). Extended by the profiles/cost-models work (issue 3)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SCHEMA_VERSION", "BopsParams", "SizeParams", "CostModelParams", "HardwareProfile"]

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BopsParams(_Strict):
    """Bit operations need no parameters."""

    name: Literal["bops"] = "bops"


class SizeParams(_Strict):
    """Weight storage needs no parameters."""

    name: Literal["size"] = "size"


CostModelParams = Annotated[BopsParams | SizeParams, Field(discriminator="name")]


class HardwareProfile(_Strict):
    """What a device is and how to cost a layer on it."""

    schema_version: Literal[1] = Field(description="Profile schema version; bump on breaking changes.")
    name: str = Field(min_length=1, description="Short name used with --hw.")
    description: str = Field(default="", description="One line on the device.")
    kind: Literal["gpu", "cpu", "accelerator"] = Field(description="Device class.")
    cost_model: CostModelParams = Field(description="Default cost model and its parameters.")
    sources: list[str] = Field(min_length=1, description="Where the figures come from.")
