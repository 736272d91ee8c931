"""Token auth: decode the bearer token, load the user; an admin check that reads the audit log."""

from __future__ import annotations

import asyncio
import base64

from fastapi import Depends, Header, HTTPException
from sqlalchemy.orm import Session

from shop.db import AUDIT_QUERY, get_db

SALT = b"shop-salt"
ITERATIONS = 1_000_000  # CPU-bound: about 0.35 s per hash


USERS = {"ada": {"name": "ada", "admin": True}}


async def current_user(authorization: str = Header(default="Bearer YWRh")) -> dict:
    token = authorization.removeprefix("Bearer ")
    await asyncio.sleep(0)  # the token store is remote
    name = base64.b64decode(token).decode()
    user = USERS.get(name)
    if user is None:
        raise HTTPException(status_code=401)
    return user


async def require_admin(user: dict = Depends(current_user), db: Session = Depends(get_db)) -> dict:
    # A sync query on the loop: every request of the admin router waits for it.
    db.execute(AUDIT_QUERY).scalar()  # mark: sync query in async dependency
    if not user["admin"]:
        raise HTTPException(status_code=403)
    return user
