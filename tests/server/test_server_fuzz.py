"""Property-based fuzzing from the OpenAPI document (schemathesis + Hypothesis), in-process:
schema-valid (positive) and schema-violating (negative) requests for every operation, and
generated query-language strings for text search (`id:` with any digits, quotes, minus
terms, weights, `image:`/`text:` terms). Every response must be documented, match its
schema and content type, and never be a 5xx; schema violations must be refused.
Bounded and derandomized: `QUICK_EXAMPLES` per operation and mode in the default run,
`MAX_EXAMPLES` in the slow run (`pytest -m slow`)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from clipsift.server import ServerSettings, create_app  # noqa: E402
from tests.support.serverkit import build_index  # noqa: E402

QUICK_EXAMPLES = 30
MAX_EXAMPLES = 100
EXAMPLES = [QUICK_EXAMPLES, pytest.param(MAX_EXAMPLES, marks=pytest.mark.slow)]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def api_schema(photos, tmp_path_factory):
    path = build_index(photos, tmp_path_factory.mktemp("fuzz"), count=6)
    # schemathesis calls the app as host "testserver"; allow it next to loopback names
    app = create_app(path, "fake", ServerSettings(
        allowed_hosts=("testserver", "127.0.0.1", "localhost"), request_timeout_s=120,
        max_k=50))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]  # too many files
    yield schema
    app.state.service.close()


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_lists_every_endpoint(api_schema):
    labels = {op.label for op in _operations(api_schema)}
    assert len(labels) >= 14, labels
    assert "GET /v1/thumbnail/{item_id}" in labels and "POST /v1/search/text" in labels


@pytest.mark.parametrize("examples", EXAMPLES)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms(api_schema, mode, examples):
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    failures: list[str] = []
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @fuzz_settings(examples)
        def run(case):
            case.call_and_validate(checks=checks)

        try:
            run()
        except Unsatisfiable:  # nothing to violate (an operation without parameters)
            continue
        except Exception as exc:  # collect all operations' failures, then report
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)


# ---- the query language -----------------------------------------------------------------
_DIGITS = st.one_of(
    st.integers(0, 2**70).map(str),
    st.text(alphabet="0123456789٣²١３⁵", min_size=1, max_size=25),
)
_WORD = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\x00'),
                min_size=1, max_size=12)
_WEIGHT = st.one_of(st.just(""), st.floats(0, 1e6, allow_nan=False).map(lambda w: f"{w:g}:"),
                    st.integers(0, 10**25).map(lambda w: f"{w}:"), st.just(".5:"))
_TERM = st.one_of(
    _WORD,
    _WORD.map(lambda w: f'"{w}"'),
    _DIGITS.map(lambda d: f"id:{d}"),
    st.sampled_from(["id:", "id:1", "ID:2", "id: 3", 'id:"4"', "id:-1", "id:1.5"]),
    _WORD.map(lambda w: f"image:{w}"),
    _WORD.map(lambda w: f'text:"{w}"'),
)
_OPERATOR = st.sampled_from([" + ", " - ", "-", "+", " ", ' "-" ', "- ", " -"])
QUERIES = st.builds(
    lambda first, rest: first + "".join(op + w + t for op, w, t in rest),
    st.tuples(_WEIGHT, _TERM).map("".join),
    st.lists(st.tuples(_OPERATOR, _WEIGHT, _TERM), max_size=4),
)


@pytest.mark.parametrize("examples", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_query_language_never_fails_the_server(api_schema, examples):
    operation = api_schema["/v1/search/text"]["POST"]

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
           query=QUERIES)
    @fuzz_settings(examples)
    def run(case, query):
        case.body = {**case.body, "query": query, "plain": False}
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code in (200, 400, 404, 422), (query, response.text)

    run()
