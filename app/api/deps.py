"""Request dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``EmbedderDep``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db.session import unit_of_work
from app.errors import ServiceNotReadyError
from app.inference import ModelRunner
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: committed once after the route returns, rolled back if it raised.

    Declared with ``scope="function"`` so the commit happens before the response is sent: a client never
    sees a 201 for work that then failed to commit.
    """
    with unit_of_work(request.app.state.session_factory) as session:
        yield session


def get_embedder(request: Request) -> ModelRunner:
    runner: ModelRunner | None = getattr(request.app.state, "model_runner", None)
    if runner is None:
        raise ServiceNotReadyError("the fingerprint model is not loaded")
    return runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
EmbedderDep = Annotated[ModelRunner, Depends(get_embedder)]
