"""``ImageStoreDep``: the block image store the app was created with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.images.store import ImageStore


def get_image_store(request: Request) -> ImageStore:
    store: ImageStore = request.app.state.image_store
    return store


ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]
