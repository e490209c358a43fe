"""FastAPI dependency aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.service import KeelService


def get_service(request: Request) -> KeelService:
    return request.app.state.keel


Service = Annotated[KeelService, Depends(get_service)]
