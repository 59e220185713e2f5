"""The training loop's parts (model/trainer.py), each called on its own: set-up, a step, an epoch, its
end (records, checkpoints, early stopping), Ctrl-C between steps, the KL warm-up, fitting the prior."""

import pytest
import torch

from model import checkpoint
from model import trainer as trainer_module
from model.config import TrainConfig
from model.trainer import kl_weight, train
from tests.unit.model.test_train import CONFIG, IWAE, MODEL, MOG


def test_kl_warmup_ramps_linearly_to_beta():
    config = TrainConfig(beta=2.0, kl_warmup_epochs=4)
    assert kl_weight(config, 0, 0, 10) == 0.0
    assert kl_weight(config, 1, 5, 10) == pytest.approx(2.0 * 1.5 / 4)
    assert kl_weight(config, 9, 0, 10) == 2.0


def test_early_stopping_ends_the_run_after_patience_epochs_without_a_better_bound():
    history = [{"selection": s} for s in (-10.0, -9.0, -9.5, -9.2)]
    assert trainer_module.epochs_without_improvement(history) == 2
    assert trainer_module.epochs_without_improvement(history[:2]) == 0


def test_patience_stops_the_run(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "epochs_without_improvement", lambda history: len(history))
    last = train(
        MOG, TrainConfig(**{**IWAE.to_dict(), "epochs": 5, "patience": 2}), tiny_dataset, tmp_path, progress=False
    )
    assert last["epoch"] == 2  # stopped, not run to 5


def test_fit_prior_moves_the_mixture_onto_the_aggregate_posterior(tiny_dataset):
    from model.core.likelihoods import LIKELIHOODS
    from model.vae import VAE

    torch.manual_seed(0)
    model = VAE(MOG)
    with torch.no_grad():  # posteriors far from N(0, I): means near 3, narrow
        model.encoder.head.weight.mul_(0.1)
        model.encoder.head.bias.copy_(torch.tensor([3.0] * 4 + [-3.0] * 4))
    x = torch.from_numpy(tiny_dataset.train[:200])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mean, logvar = model.encode(x.bernoulli(generator=generator))
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        before = model.prior.log_prob(z).mean()
    trainer_module.fit_prior(model, x, LIKELIHOODS["bernoulli"], steps=200, generator=generator, batch=100, lr=3e-2)
    with torch.no_grad():
        after = model.prior.log_prob(z).mean()
        assert after > before + 10.0 and after > model.prior.log_prob(torch.randn(200, 4)).mean()


def test_set_up_builds_the_run_before_its_first_step(tiny_dataset, tmp_path):
    trainer = trainer_module.set_up(MODEL, CONFIG, tiny_dataset, tmp_path, trainer_module.RunOptions(progress=False))
    assert trainer.start_epoch == 0 and trainer.history == [] and trainer.best == float("-inf")
    assert trainer.last_epoch() == CONFIG.epochs and trainer.objective is not None
    assert len(trainer.x_train) == len(tiny_dataset.train) and trainer.x_val is None


def test_one_step_and_one_epoch_move_the_weights_and_count_the_images(tiny_dataset, tmp_path):
    trainer = trainer_module.set_up(MODEL, CONFIG, tiny_dataset, tmp_path, trainer_module.RunOptions(progress=False))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    terms, loss = trainer.step(trainer.x_train[:8], epoch=0, step=0)
    assert terms["objective"].shape == (8,) and torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with trainer_module._Interrupt() as interrupt:
        totals = trainer.run_epoch(0, interrupt, tracer=None)
    assert totals["images"] == trainer.order.steps_per_epoch * trainer.order.batch_size


def test_the_end_of_an_epoch_records_it_and_writes_last_and_best(tiny_dataset, tmp_path):
    trainer = trainer_module.set_up(MODEL, CONFIG, tiny_dataset, tmp_path, trainer_module.RunOptions(progress=False))
    totals = {"objective": -80.0, "elbo": -80.0, "reconstruction": -70.0, "kl": 10.0, "images": 160}
    assert not trainer.end_epoch(0, totals, seconds=2.0)  # no patience: never stops early
    (record,) = trainer.history
    assert record["epoch"] == 1 and record["train_elbo"] == -0.5 and record["selection"] == record["test_elbo"]
    assert trainer.best == record["selection"]
    assert checkpoint.load(tmp_path / "best.pt").best_selection == record["selection"]
    assert checkpoint.load(tmp_path / "last.pt").epoch == 1


def test_a_second_ctrl_c_between_steps_stops_the_epoch_with_status_130(tiny_dataset, tmp_path, capsys):
    trainer = trainer_module.set_up(MODEL, CONFIG, tiny_dataset, tmp_path, trainer_module.RunOptions(progress=False))
    interrupt = trainer_module._Interrupt()
    interrupt.requested = True
    with pytest.raises(SystemExit) as exit_info:
        trainer.stop_if_interrupted(interrupt, epoch=1)
    assert exit_info.value.code == 130 and "holds the end of epoch 1" in capsys.readouterr().err


def test_the_weight_tracer_hook_writes_one_hash_per_step(tiny_dataset, tmp_path):
    one = TrainConfig(**{**CONFIG.to_dict(), "epochs": 1})
    hooks = trainer_module.TrainHooks(trace_weights=tmp_path / "trace")
    train(MODEL, one, tiny_dataset, tmp_path / "run", progress=False, hooks=hooks)
    lines = (tmp_path / "trace" / "rank0.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines][:2] == ["1:0", "1:1"] and len(
        {line.split()[1] for line in lines}
    ) == len(lines)
