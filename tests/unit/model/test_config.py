import pytest

from model.config import ModelConfig, TrainConfig


def test_round_trip_through_a_dict():
    config = ModelConfig(arch="mlp", latent_dim=7, hidden=(64, 32), input_shape=(1, 8, 8))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.input_dim == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "transformer"}, "arch must be"),
        ({"likelihood": "poisson"}, "likelihood must be"),
        ({"input_shape": (1, 30, 30), "conv_channels": (8, 8)}, "divisible by"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"logvar_min": 3.0, "logvar_max": 1.0}, "logvar_min"),
    ],
)
def test_invalid_model_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"latent": 3})


def test_invalid_train_config():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
