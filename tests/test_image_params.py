"""Picture parameters have one definition, shared by the engine, the core and HTTP."""

from __future__ import annotations

from ovbot.adapters.http.schemas import ChatImageOptions, ImageRequestBody
from ovbot.core.domain import ImageParams
from ovbot.core.engines.types import IMAGE_FIELDS, ImageRequest


def test_image_parameters_are_defined_once() -> None:
    """The core's picture parameters are the engine's request type, and the HTTP bodies
    carry exactly those fields, the /images body extending the /chat picture options."""
    assert ImageParams is ImageRequest
    assert issubclass(ImageRequestBody, ChatImageOptions)
    assert set(ChatImageOptions.model_fields) == set(IMAGE_FIELDS) - {"prompt"}
    assert set(ImageRequestBody.model_fields) == set(IMAGE_FIELDS) | {"user_id"}
