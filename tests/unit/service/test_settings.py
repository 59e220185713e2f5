import pytest

from service.settings import SettingsError, load_settings


def test_settings_come_from_vae_environment_variables(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH", "12")
    monkeypatch.setenv("VAE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("VAE_CORS_ORIGINS", '["https://a.example"]')
    settings = load_settings()
    assert settings.max_batch == 12 and settings.log_level == "warning"
    assert settings.cors_origins == ["https://a.example"]


def test_invalid_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH", "0")
    monkeypatch.setenv("VAE_WORKERS", "many")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "VAE_MAX_BATCH" in str(info.value) and "VAE_WORKERS" in str(info.value)


def test_vae_serve_refuses_invalid_settings_readably(monkeypatch, capsys):
    from service.cli import main

    monkeypatch.setenv("VAE_PORT", "70000")
    assert main([]) == 2
    assert "VAE_PORT" in capsys.readouterr().err
