"""Measured fixes for the mistralai SDK's per-call cost, checked against one SDK version only.

mistralai 3.x (Speakeasy-generated) does, on every call, work that depends only on types:
- it builds a brand-new pydantic model class with `create_model` for every value it marshals or unmarshals
  (`utils/serializers.py`: "Marshaller"/"Unmarshaller"), several per chat call; building a class means
  generating its core schema (profiled: 34.5 ms → 21.8 ms per in-process chat once cached; bench/RESULTS.md);
- it calls `typing.get_type_hints` on the request's class to read its query, path and form parameters
  (`utils/queryparams.py`, `url.py`, `forms.py`): 18 % of a call's time in cProfile;
- its packages `utils`, `models` and `errors` resolve their names lazily (PEP 562 `__getattr__`) and do so again
  on every access: 33 `importlib.import_module` calls per chat call (10 % of what remained, 2026-12-04);
- it renders the whole request body as text (`str(req.content)`, `basesdk.get_body_content`) for a debug line
  that its default logger, the only one we give it, drops: 0.9 ms of the event loop for a prompt of 340 KB (a
  long conversation), of 2.2 ms that the SDK spends on such a call (`python -m bench.sdk_overhead
  --memory-chars 340000`). It now renders a placeholder, and no debug logger could print a prompt.
The first three depend only on their arguments (a name, a type, a config; a class), so they are memoised (a lazy
name is kept in its module once resolved, as a plain import would have). Anything unexpected (an unhashable type)
falls back to the SDK's own function.

These replace functions inside the SDK: they are applied only to the version they were checked against
(CHECKED_VERSION, also the exact pin in pyproject.toml; tests/test_chat.py fails when they differ). Upgrading the
SDK means reading those modules again, then moving the pin and CHECKED_VERSION together.
"""

from __future__ import annotations

import functools
import importlib.metadata
import types
import typing
from typing import Any

import httpx2
from pydantic import ConfigDict

CHECKED_VERSION = "3.7.0"


def install() -> bool:
    """True when the fixes are in place (now or already); False, leaving the SDK untouched, on another version."""
    if importlib.metadata.version("mistralai") != CHECKED_VERSION:
        return False
    try:
        from mistralai.client.utils import forms, queryparams, serializers, url
    except ImportError:  # pragma: no cover - another SDK layout: leave it alone
        return False
    if getattr(serializers.create_model, "_wibot_cached", False):  # type: ignore[attr-defined]
        return True
    for module in (queryparams, url, forms):
        module.get_type_hints = _cached_type_hints  # type: ignore[attr-defined]
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
    from mistralai.client import basesdk, errors, models, utils

    for package in (utils, models, errors):
        _remember_lazy_names(package)
    basesdk.get_body_content = body_not_rendered  # type: ignore[attr-defined]
    return True


def body_not_rendered(req: httpx2.Request) -> str:
    return "<body not logged>"


def _remember_lazy_names(package: types.ModuleType) -> None:
    """The package's lazy `__getattr__`, keeping what it resolves in the module (next access: a dict lookup)."""
    resolve = package.__getattr__

    def remembering(name: str) -> Any:
        value = resolve(name)
        setattr(package, name, value)
        return value

    package.__getattr__ = remembering  # type: ignore[method-assign]


@functools.lru_cache(maxsize=512)
def _type_hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _cached_type_hints(obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """typing.get_type_hints for the classes the SDK passes (a copy: callers may not mutate the cached one)."""
    if args or kwargs or not isinstance(obj, type):
        return typing.get_type_hints(obj, *args, **kwargs)
    try:
        return dict(_type_hints_of(obj))
    except TypeError:  # unhashable
        return typing.get_type_hints(obj)
