from __future__ import annotations

import asyncio
import hashlib

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from shop.auth import ITERATIONS, SALT, current_user

router = APIRouter(prefix="/users", tags=["users"])


@router.post("/login")
async def login(password: str = "secret") -> dict:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, ITERATIONS)  # mark: pbkdf2 on the loop
    return {"token": digest.hex()[:16]}


@router.post("/login-threaded")
async def login_threaded(password: str = "secret") -> dict:
    # The healthy twin: the same hash in the threadpool.
    digest = await run_in_threadpool(hashlib.pbkdf2_hmac, "sha256", password.encode(), SALT, ITERATIONS)
    return {"token": digest.hex()[:16]}


@router.get("/me")
async def me(user: dict = Depends(current_user)) -> dict:
    await asyncio.sleep(0.01)
    return user
