"""A measured fix for the mistralai SDK's per-call cost.

mistralai 3.x (Speakeasy-generated) builds a brand-new pydantic model class with `create_model` for every
value it marshals or unmarshals (`utils/serializers.py`: "Marshaller"/"Unmarshaller"), several per chat call.
Building a pydantic class means generating its core schema: it was most of the chat service's own CPU time
(profiled with cProfile: 34.5 ms → 21.8 ms per in-process chat once cached; see bench/RESULTS.md).

The classes depend only on (name, type, config), so we memoise them. Anything unexpected (an unhashable
type, a changed signature in a future SDK) falls back to the SDK's own function untouched.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ConfigDict


def install() -> bool:
    try:
        from mistralai.client.utils import serializers
    except ImportError:  # pragma: no cover - another SDK layout: leave it alone
        return False
    if getattr(serializers.create_model, "_wibot_cached", False):  # type: ignore[attr-defined]
        return True
    original = serializers.create_model  # type: ignore[attr-defined]

    @functools.lru_cache(maxsize=512)
    def build(name: str, typ: Any, config: tuple[tuple[str, Any], ...]) -> Any:
        return original(name, body=(typ, ...), __config__=ConfigDict(**dict(config)))  # type: ignore[typeddict-item]

    def create_model(name: str, **kwargs: Any) -> Any:
        body, config = kwargs.get("body"), kwargs.get("__config__")
        if set(kwargs) == {"body", "__config__"} and isinstance(body, tuple) and body[1] is ...:
            try:
                return build(name, body[0], tuple(sorted((config or {}).items())))
            except TypeError:  # unhashable type or config value
                pass
        return original(name, **kwargs)

    create_model._wibot_cached = True  # type: ignore[attr-defined]
    serializers.create_model = create_model  # type: ignore[attr-defined,assignment]
    return True
