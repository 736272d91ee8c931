"""An app with one route that does recognisable work (for /profile) and one that does not."""

import hashlib

from fastapi import FastAPI

app = FastAPI()


def crunch_numbers(rounds: int) -> str:
    digest = b"seed"
    for _ in range(rounds):
        digest = hashlib.sha256(digest * 64).digest()
    return digest.hex()[:16]


@app.get("/work/{n}")
async def work(n: int) -> dict[str, object]:
    return {"n": n, "digest": crunch_numbers(20000)}


def tally_words(rounds: int) -> int:
    return sum(len(hashlib.md5(str(i).encode() * 32).hexdigest()) for i in range(rounds))


@app.get("/other")
async def other() -> dict[str, str]:
    tally_words(5000)
    return {"status": "ok"}
