from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware

from shop.internal import internal
from shop.routers import admin, orders, users

app = FastAPI(title="shop")
app.add_middleware(GZipMiddleware, minimum_size=1000)
app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
app.add_middleware(
    CORSMiddleware,
    allow_origins=["https://shop.example"],
    allow_credentials=True,
    allow_methods=["*"],
    allow_headers=["*"],
)

api = APIRouter(prefix="/api/v1")
api.include_router(users.router)
api.include_router(orders.router)
api.include_router(admin.router)
app.include_router(api)
app.mount("/internal", internal)


@app.get("/")
async def root() -> dict:
    return {"status": "ok"}
