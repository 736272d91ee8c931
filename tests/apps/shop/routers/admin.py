from __future__ import annotations

from fastapi import APIRouter, Depends

from shop.auth import require_admin

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/stats")
async def stats() -> dict:
    return {"orders": 0}
