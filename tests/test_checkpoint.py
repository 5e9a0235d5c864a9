"""helpers.checkpoint for hand-written training loops (module_fingerprint, load_module, save_module).

The trainers' own use of the module (train_vae, train_rbm) is tested in test_vae and
test_rbm_training, including files that hold pickled code.
"""
import pytest
import torch

from helpers import checkpoint


def make(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def train(model, x, gen, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=gen)[:8]
        loss = model(x[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"loss": losses}


def test_round_trip_loads_the_trained_weights_and_history(tmp_path, capsys):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "run.pt"
    model = make()
    fp = checkpoint.module_fingerprint(model, data=x, steps=5, lr=0.1, generator=torch.Generator().manual_seed(2))
    assert checkpoint.load_module(path, model, fp) is None  # nothing saved yet
    history = train(model, x, torch.Generator().manual_seed(2))
    checkpoint.save_module(path, model, fp, history)

    fresh = make()  # same initial weights, same settings: loads instead of training
    fp2 = checkpoint.module_fingerprint(fresh, data=x, steps=5, lr=0.1, generator=torch.Generator().manual_seed(2))
    assert fp2 == fp
    loaded = checkpoint.load_module(path, fresh, fp2)
    assert loaded == history
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert "Loaded the trained weights" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["lr", "data", "init", "generator"])
def test_any_changed_setting_makes_the_file_stale(tmp_path, capsys, change):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "run.pt"
    model = make()
    fp = checkpoint.module_fingerprint(model, data=x, lr=0.1, generator=torch.Generator().manual_seed(2))
    checkpoint.save_module(path, model, fp, train(model, x, torch.Generator().manual_seed(2)))
    other = make(seed=1 if change == "init" else 0)
    before = [t.clone() for t in other.state_dict().values()]
    settings = dict(data=x, lr=0.1, generator=torch.Generator().manual_seed(2))
    if change == "lr":
        settings["lr"] = 0.2
    elif change == "data":
        settings["data"] = x.clone().index_fill_(0, torch.tensor([3]), 0.0)
    elif change == "generator":
        settings["generator"] = torch.Generator().manual_seed(3)
    assert checkpoint.load_module(path, other, checkpoint.module_fingerprint(other, **settings)) is None
    assert all(torch.equal(a, b) for a, b in zip(before, other.state_dict().values()))  # untouched
    assert "different configuration" in capsys.readouterr().out


def test_cache_off_and_bad_settings(tmp_path):
    model = make()
    fp = checkpoint.module_fingerprint(model, lr=0.1)
    assert checkpoint.load_module(None, model, fp) is None
    checkpoint.save_module(None, model, fp, {"loss": [1.0]})  # nothing written anywhere
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="setting 'opt'"):
        checkpoint.module_fingerprint(model, opt=torch.optim.SGD(model.parameters(), lr=0.1))
