"""An app with one route that does recognisable work (for /profile), on an included router as real
apps declare them, and one that does not."""

import hashlib

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

app = FastAPI()
app.add_middleware(CORSMiddleware, allow_origins=["https://example.com"])
api = APIRouter(prefix="/work")


def crunch_numbers(rounds: int) -> str:
    digest = b"seed"
    for _ in range(rounds):
        digest = hashlib.sha256(digest * 64).digest()
    return digest.hex()[:16]


@api.get("/{n}")
async def work(n: int) -> dict[str, object]:
    return {"n": n, "digest": crunch_numbers(20000)}


def tally_words(rounds: int) -> int:
    return sum(len(hashlib.md5(str(i).encode() * 32).hexdigest()) for i in range(rounds))


app.include_router(api, prefix="/api")


@app.get("/other")
async def other() -> dict[str, str]:
    tally_words(5000)
    return {"status": "ok"}
