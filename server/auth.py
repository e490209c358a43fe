"""Who is calling: an API key (Bearer or x-api-key) mapped to a user id by KEEL_API_KEYS.

With no keys configured (local embedded mode) every request is the single user "local".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from server.errors import ApiError

LOCAL_USER = "local"


@dataclass(frozen=True)
class User:
    """The authenticated caller."""

    id: str
    roles: tuple[str, ...] = ()
    tenant: str | None = None


def user_for(api_keys: dict[str, User | str], authorization: str | None, x_api_key: str | None) -> User:
    """Resolve the caller from headers; raises 401 when keys are configured and none matches."""
    if not api_keys:
        return User(LOCAL_USER)
    token = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    candidates = [t for t in (token, x_api_key) if t]
    for t in candidates:
        if t in api_keys:
            found = api_keys[t]
            return found if isinstance(found, User) else User(found)
    raise ApiError(401, "Missing or invalid API key" if not candidates else "Invalid API key")


async def current_user(request: Request) -> User:
    """FastAPI dependency."""
    keys = request.app.state.keel.settings.api_users
    return user_for(keys, request.headers.get("authorization"), request.headers.get("x-api-key"))


CurrentUser = Annotated[User, Depends(current_user)]
