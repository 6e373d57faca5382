"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis): schema-
valid (positive) and schema-violating (negative) generated requests must never get a 5xx.
Bounded: `MAX_EXAMPLES` per operation and mode, derandomized, well under a minute."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from clipsift.server import ServerSettings, create_app  # noqa: E402
from tests.support.serverkit import build_index  # noqa: E402

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def api_schema(photos, tmp_path_factory):
    path = build_index(photos, tmp_path_factory.mktemp("fuzz"), count=6)
    # schemathesis calls the app as host "testserver"; allow it next to loopback names
    app = create_app(path, "fake", ServerSettings(
        allowed_hosts=("testserver", "127.0.0.1", "localhost"), request_timeout_s=20))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.service.close()


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_lists_every_endpoint(api_schema):
    labels = {op.label for op in _operations(api_schema)}
    assert len(labels) >= 14, labels
    assert "GET /v1/thumbnail/{item_id}" in labels and "POST /v1/search/text" in labels


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema, mode):
    failures: list[str] = []
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(checks=[not_a_server_error])

        try:
            run()
        except Exception as exc:  # collect all operations' failures, then report
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
