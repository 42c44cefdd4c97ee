"""SQL written with named parameters (`:name`), run with asyncpg's positional ones (`$1`): a long statement's
values are passed by name, so no comment has to map fifteen numbers (nosht does the same with buildpg)."""

from __future__ import annotations

import re
from typing import Any

# `:name`, not the second colon of a `::type` cast.
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class Statement:
    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.sql = _PARAMETER.sub(number, sql)
        self.names = tuple(names)

    def arguments(self, **values: Any) -> list[Any]:
        """The values in the statement's order; every parameter must be given, and nothing else."""
        if set(values) != set(self.names):
            missing, unknown = set(self.names) - set(values), set(values) - set(self.names)
            raise TypeError(f"statement parameters: missing {sorted(missing)}, unknown {sorted(unknown)}")
        return [values[name] for name in self.names]
