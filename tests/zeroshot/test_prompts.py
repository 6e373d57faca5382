"""One implementation of templates and class embeddings: the same rules and the same
vectors from the CLI, the library, `evaluate` and the server."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

import clipsift
from clipsift.cli.main import main
from clipsift.errors import UsageError
from clipsift.evaluation.prompts import PromptSet, TextBank, parse_prompts
from clipsift.server import ServerSettings, create_app
from clipsift.zeroshot.classes import class_embeddings, pool, prompts_for
from clipsift.zeroshot.classifier import ZeroShotClassifier
from clipsift.zeroshot.templates import named_templates, parse_template, resolve_templates
from tests.support.serverkit import LOOPBACK

# (template, what the one-line error names)
BAD = [
    ("a {} in {style}", "'{style}'"),
    ("a photo of {0}", "'{0}'"),
    ("a {:>10} photo", "'{:>10}'"),
    ("a {!r} photo", "'{!r}'"),
    ("a {label} photo", "'{label}'"),
    ("a {} photo }", "Single '}'"),
    ("no placeholder", "0 label placeholders"),
    ("{} and {c}", "2 label placeholders"),
]


@pytest.mark.parametrize(("template", "canonical"), [
    ("a photo of a {}.", "a photo of a {}."),
    ("a photo of a {c}.", "a photo of a {}."),  # CLIP_benchmark's placeholder
    ("{{logo}} of a {}", "{{logo}} of a {}"),
    ("a {c} in }}braces{{", "a {} in }}braces{{"),
])
def test_good_templates_are_canonical(template, canonical):
    assert parse_template(template) == canonical
    assert parse_template(canonical) == canonical  # idempotent


def test_literal_braces_and_labels_with_braces():
    assert prompts_for(["{x}", "dog"], ["{{a}} {c}!", "b {}"]) == [
        "{a} {x}!", "b {x}", "{a} dog!", "b dog"]
    assert prompts_for(["cat"], None) == ["cat"]


@pytest.mark.parametrize(("template", "named"), BAD)
def test_bad_template_names_the_placeholder(template, named):
    with pytest.raises(UsageError) as info:
        parse_template(template)
    msg = str(info.value)
    assert repr(template) in msg and named in msg and "\n" not in msg


def test_named_sets_are_canonical():
    for name in ("imagenet80", "simple"):
        temps = named_templates(name)
        assert temps == [parse_template(t) for t in temps]
    assert resolve_templates(["a {c}."], "simple")[:2] == ["a {}.", *named_templates("simple")[:1]]


# ---- the same bad template, every route ---------------------------------------------------
@pytest.fixture(scope="module")
def dataset(photos, tmp_path_factory):
    """A tiny folder-per-class dataset of real photos."""
    root = tmp_path_factory.mktemp("ds")
    for i, p in enumerate(photos[:4]):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    return root


@pytest.fixture(scope="module")
def fake():
    return clipsift.load("fake")


@pytest.fixture(scope="module")
def client(fake):
    with TestClient(create_app(None, fake, ServerSettings(max_texts=8)),
                    base_url=LOOPBACK) as c:
        yield c


@pytest.mark.parametrize(("template", "named"), BAD[:3])
def test_bad_template_is_a_usage_error_everywhere(template, named, dataset, fake, client,
                                                  photos, tmp_path, capsys):
    # CLI classify and CLI evaluate: exit 2, one line naming template and placeholder
    for argv in (["classify", str(dataset), "--labels", "cat,dog", "--template", template],
                 ["evaluate", str(dataset), "--prompts", template, "--no-cache"]):
        code = main([*argv, "--model", "fake", "--workers", "0"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert template in err and named in err and len(err.strip().splitlines()) == 1, err
    # the library
    with pytest.raises(UsageError, match="placeholder"):
        clipsift.classify(fake, [str(photos[0])], ["cat", "dog"], templates=[template])
    with pytest.raises(UsageError, match="placeholder"):
        ZeroShotClassifier(fake, ["cat", "dog"], [template])
    with pytest.raises(UsageError, match="placeholder"):
        parse_prompts(template, ["cat", "dog"])
    # the server, JSON and multipart
    data = base64.b64encode(photos[0].read_bytes()).decode()
    body = {"image": {"data": data}, "labels": ["cat", "dog"], "templates": [template]}
    resp = client.post("/v1/classify", json=body)
    assert resp.status_code == 422 and named in resp.json()["detail"], resp.text
    resp = client.post("/v1/classify/upload", files={"file": ("x.jpg", photos[0].read_bytes())},
                       data={"labels": ["cat", "dog"], "templates": [template]})
    assert resp.status_code == 422 and named in resp.json()["detail"], resp.text


def test_clip_benchmark_template_file_works_in_evaluate(dataset, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {c}.\na drawing of a {c}.\n{{logo}} of the {c}.\n")
    code = main(["evaluate", str(dataset), "--prompts", str(templates), "--prompts",
                 "a photo of a {}.", "--no-cache", "--json", "--model", "fake", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    ps = parse_prompts(str(templates), ["cat", "dog"])
    assert ps.prompts[1] == ("a photo of a dog.", "a drawing of a dog.", "{logo} of the dog.")


# ---- identical class embeddings from every route -------------------------------------------
@pytest.fixture(scope="module", params=["fake", "tiny"])
def model(request, tiny_vit):
    if request.param == "fake":
        return clipsift.load("fake")
    return clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")


@pytest.mark.parametrize("templates", [None, ["a photo of a {c}.", "art of the {}."],
                                       named_templates("simple")])
def test_class_embeddings_identical_across_routes(model, templates):
    labels = ["cat", "dog", "red car", "{odd} label"]
    lib = class_embeddings(model, labels, templates)
    assert lib.shape == (len(labels), model.dim) and lib.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(lib, axis=1), 1.0, atol=1e-6)
    clf = ZeroShotClassifier(model, labels, templates).weights
    ps = (PromptSet.from_templates("t", templates, labels) if templates
          else PromptSet("labels", tuple((lab,) for lab in labels)))
    bank = TextBank(model).class_weights(ps)
    with TestClient(create_app(None, model, ServerSettings(max_texts=8)),
                    base_url=LOOPBACK) as c:
        served = c.portal.call(c.app.state.service.class_weights, labels, templates, None)
    exact = model.backend == "fake"  # a real model's batches may differ in the last bits
    for other in (clf, bank, served):
        if exact:
            assert np.array_equal(lib, other)
        else:
            np.testing.assert_allclose(lib, other, atol=1e-6)
    # and they are what the definition says: the renormalised mean of unit prompt vectors
    per = model.encode_texts(prompts_for(labels, templates)).reshape(len(labels), -1, model.dim)
    want = per.mean(axis=1)
    np.testing.assert_allclose(lib, want / np.linalg.norm(want, axis=1, keepdims=True),
                               atol=1e-6)


def test_pool_checks_its_shape():
    with pytest.raises(ValueError, match="3 x 2"):
        pool(np.ones((5, 4), np.float32), 3, 2)
