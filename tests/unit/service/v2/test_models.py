"""What a v2 model is called: the repository model and a kind."""

from __future__ import annotations

from service.v2.models import MODELS, split_name, v2_names


def test_a_v2_name_is_the_repository_model_and_a_kind():
    assert split_name("fashion-mnist-vae.encoder") == ("fashion-mnist-vae", MODELS["encoder"])
    assert split_name("a.b.elbo") == ("a.b", MODELS["elbo"])
    assert split_name("fashion-mnist-vae") is None and split_name(".encoder") is None
    assert split_name("m.nothing") is None
    assert v2_names("m")[:2] == ["m.encoder", "m.decoder"] and len(v2_names("m")) == len(MODELS)
