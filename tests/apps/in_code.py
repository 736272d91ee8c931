"""The agent started in code, with no wrapper."""

from fastapi import FastAPI

import fastapi_doctor

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/users/{user_id}")
async def user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


fastapi_doctor.instrument(app)
