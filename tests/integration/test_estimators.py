"""/elbo's two estimators of log p(x) over real HTTP, on every model in the bundled repository
(artifacts/<name>/<latest version>): sampling z from the prior wastes the samples that sampling from
q(z|x) puts where p(x|z) is not negligible (README: Why z is sampled from q(z|x))."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from service.registry import version_key
from tests.conftest import REPO
from tests.integration.conftest import png, serving

REPOSITORY = REPO / "artifacts"
K = 1000
IMAGES = 4


def bundled_models(repository: Path) -> list[tuple[str, str]]:
    """(name, latest version) of each model with a manifest in the repository."""
    versions: dict[str, list[str]] = {}
    for manifest in sorted(repository.glob("*/*/manifest.json")):
        versions.setdefault(manifest.parent.parent.name, []).append(manifest.parent.name)
    return [(name, max(found, key=version_key)) for name, found in sorted(versions.items())]


MODELS = bundled_models(REPOSITORY)


@pytest.fixture(scope="module")
def repository_http(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("estimators"), VAE_MODEL_REPOSITORY=str(REPOSITORY)) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client


def test_the_bundled_repository_has_a_model_to_test():
    assert MODELS, f"no model under {REPOSITORY}"


def _scores(http: httpx.Client, name: str, version: str, images: np.ndarray, estimator: str) -> dict:
    files = [("file", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(images)]
    response = http.post(f"/v1/models/{name}/versions/{version}/elbo?k={K}&seed=0&estimator={estimator}", files=files)
    if response.status_code == 404:
        pytest.skip(f"{name} {version} is not served at this base URL")
    body = response.json()
    assert response.status_code == 200 and body["estimator"] == estimator and body["k"] == K, body
    return {key: np.array([r[key] for r in body["results"]]) for key in
            ("log_likelihood", "log_likelihood_standard_error", "effective_sample_size", "elbo")}


@pytest.mark.parametrize(("name", "version"), MODELS)
def test_the_prior_has_far_fewer_effective_samples_than_the_encoder(repository_http, test_images, name, version):
    images = test_images[:IMAGES]
    prior = _scores(repository_http, name, version, images, "prior")
    importance = _scores(repository_http, name, version, images, "importance")
    assert np.all(prior["effective_sample_size"] < 2), prior  # one or two z of the thousand carry the estimate
    assert np.all((importance["effective_sample_size"] >= 1) & (importance["effective_sample_size"] <= K))
    # ESS - 1 is how much the samples besides the heaviest one count. A Gaussian decoder's weights are
    # spiky under q(z|x) too (its ESS can be a few of the thousand), so "far below" is judged on that:
    # the prior's is nil (one weight dominates by tens of nats), the encoder's is not.
    extra_prior, extra_importance = prior["effective_sample_size"] - 1, importance["effective_sample_size"] - 1
    assert np.mean(extra_importance) > max(10 * np.mean(extra_prior), 0.1), (prior, importance)
    # and what the prior's samples missed, the estimate misses: it lies below importance sampling's
    gap = importance["log_likelihood"] - prior["log_likelihood"]
    assert np.all(gap > np.maximum(5 * importance["log_likelihood_standard_error"], 1.0)), gap


@pytest.mark.parametrize(("name", "version"), MODELS)
def test_the_default_estimator_is_importance_sampling(repository_http, test_images, name, version):
    body = png(test_images[5])
    path = f"/v1/models/{name}/versions/{version}/elbo?k=20&seed=3"
    plain = repository_http.post(path, content=body, headers={"content-type": "image/png"})
    named = repository_http.post(f"{path}&estimator=importance", content=body, headers={"content-type": "image/png"})
    assert plain.status_code == 200 and plain.content == named.content
    assert plain.json()["estimator"] == "importance"
