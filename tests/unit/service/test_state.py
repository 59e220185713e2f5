"""The app state: readiness, the messages of a model that is not served, and how a request finds
the version that serves it (404 for an unknown model, 503 while loading or after a failure)."""

import pytest

from service.errors import ApiError
from tests.unit.service.conftest import build

pytestmark = pytest.mark.anyio


def state_of(**kwargs):
    app, _ = build(**kwargs)
    return app.state.vae


def test_a_ready_state_resolves_the_default_model():
    state = state_of()
    assert state.ready and state.resolve().name == state.default_model


def test_an_unknown_model_is_404_naming_the_models_served():
    state = state_of()
    with pytest.raises(ApiError) as caught:
        state.resolve("nope")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert state.default_model in caught.value.message


def test_before_the_first_load_a_model_is_loading_and_503():
    state = state_of(ready=False)
    assert not state.ready and "loading" in state.not_ready_message()
    with pytest.raises(ApiError) as caught:
        state.resolve()
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
