"""Parameter types shared by routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import Field

from dyff.schema import NAME_PATTERN

NameStr = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
AccountQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)]
