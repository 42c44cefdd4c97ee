"""shared/statements.py: SQL with named parameters, run positionally; checked against the real server."""

from __future__ import annotations

import pytest

from shared.statements import Statement


def test_names_become_numbers_in_order_of_first_use_and_casts_stay():
    statement = Statement("SELECT :b::int + :a::int, :b::text, 'x::y', now()::date")
    assert statement.sql == "SELECT $1::int + $2::int, $1::text, 'x::y', now()::date"
    assert statement.names == ("b", "a")
    assert statement.arguments(a=1, b=2) == [2, 1]


def test_every_parameter_and_nothing_else():
    statement = Statement("SELECT :a, :b")
    with pytest.raises(TypeError, match=r"missing \['b'\], unknown \['c'\]"):
        statement.arguments(a=1, c=3)


async def test_the_server_runs_it(db):
    statement = Statement("SELECT :word::text || :times::int AS said, :times::int * 2 AS twice")
    row = await db.fetchrow(statement.sql, *statement.arguments(times=3, word="trois"))
    assert (row["said"], row["twice"]) == ("trois3", 6)
