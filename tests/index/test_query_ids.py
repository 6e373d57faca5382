"""`id:` terms: ASCII digits within SQLite's integer range, checked once by the parser, so
the CLI exits 2 (and the server answers 422) instead of failing inside int() or SQLite."""

from __future__ import annotations

import numpy as np
import pytest

from clipsift.cli.main import main
from clipsift.errors import QueryError, UsageError
from clipsift.index.query import MAX_ITEM_ID, check_item_id, parse_query
from clipsift.index.store import NewItem, Store

BAD_IDS = ["٣", "²", "١٢", "３", "1²", str(MAX_ITEM_ID + 1), "9" * 19, "9" * 400, "-1", "1.0",
           "0x10", "1_000"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_id_terms_are_query_errors(value):
    with pytest.raises(QueryError, match="id term needs a number"):
        parse_query(f"id:{value}")
    with pytest.raises(QueryError):
        parse_query(f'"a dog" + 2:id:{value}')


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("007", 7),
                                                 (str(MAX_ITEM_ID), MAX_ITEM_ID)])
def test_good_id_terms(value, expected):
    (term,) = parse_query(f"id:{value}").terms
    assert (term.kind, check_item_id(term.value)) == ("id", expected)


def test_query_errors_are_usage_errors():
    assert issubclass(QueryError, UsageError) and QueryError.exit_code == 2


@pytest.fixture
def fake_index(tmp_path):
    path = tmp_path / "q.db"
    store = Store.create(path, model="fake", dim=64)
    rng = np.random.default_rng(0)
    with store.transaction():
        for i in range(3):
            store.insert(NewItem(f"/x/{i}.jpg", 1, 0.0, f"h{i}", rng.standard_normal(64)))
    store.close()
    return str(path)


@pytest.mark.parametrize("value", ["²", "٣", "9" * 19, "9" * 25])
def test_cli_search_with_a_bad_id_exits_2(fake_index, value, capsys):
    assert main(["search", fake_index, f"id:{value}"]) == 2
    err = capsys.readouterr().err
    assert "id term needs a number" in err and "bug" not in err


def test_cli_search_with_a_good_id(fake_index, capsys):
    assert main(["search", fake_index, "id:2", "-k", "1", "--json"]) == 0
    assert '"id": 2' in capsys.readouterr().out
