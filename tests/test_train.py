"""The training loop (SPEC §5.3): seeding, resume, interrupts, early stopping, bundles, DDP."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ptychobench.models.bundle import load_bundle
from ptychobench.train import (
    CHECKPOINT_FILE,
    EarlyStopping,
    TrainConfig,
    TrainingError,
    derive_seed,
    epoch_permutation,
    seeded_build,
    shard_indices,
    should_stop,
    split_validation,
    train,
)

TESTS_DIR = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------ dummy model


class DummyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["pinn", "baseline"] = "pinn"
    N: int = 8
    channels: int = 1
    hidden: int = 6
    dropout: float = 0.0


class Dummy(nn.Module):
    """Follows the model protocol; dropout makes in-model randomness visible to the resume test."""

    def __init__(self, config: DummyConfig, probe: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.kind = config.kind
        n = config.channels * config.N**2
        self.enc = nn.Linear(n, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.dec = nn.Linear(config.hidden, 2 * n)
        self.scale = nn.Parameter(torch.tensor(0.5))
        if probe is None:
            probe = torch.ones(config.N, config.N, dtype=torch.complex64)
        self.register_buffer("probe", probe.to(torch.complex64).clone())

    def _objects(self, diffraction: torch.Tensor) -> torch.Tensor:
        B = diffraction.shape[0]
        h = self.drop(torch.tanh(self.enc(diffraction.reshape(B, -1))))
        out = self.dec(h).reshape(B, self.config.channels, 2, self.config.N, self.config.N)
        return torch.complex(out[:, :, 0], out[:, :, 1])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        obj = self._objects(batch["diffraction"])
        amp = (obj * self.probe).abs() * self.scale
        shift = batch["offsets"].mean() * 0.0  # offsets flow through (shape checked)
        return (amp - batch["diffraction"]).square().mean() + shift

    @torch.no_grad()
    def predict(self, diffraction: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self._objects(diffraction).reshape(-1, self.config.N, self.config.N)


def build_dummy(cfg: dict, probe: torch.Tensor | None) -> Dummy:
    return Dummy(DummyConfig.model_validate(cfg), probe)


def make_dummy(seed: int = 0, **kw) -> Dummy:
    return seeded_build(lambda: Dummy(DummyConfig(**kw)), seed)


def make_arrays(G: int = 24, C: int = 1, N: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obj = rng.normal(size=(G, C, N, N)) + 1j * rng.normal(size=(G, C, N, N))
    diff = np.abs(np.fft.fftshift(np.fft.fft2(obj, norm="ortho"), axes=(-2, -1)))
    offsets = rng.normal(size=(G, C, 2))
    offsets -= offsets.mean(axis=1, keepdims=True)
    return {"diffraction": diff.astype(np.float32), "offsets": offsets.astype(np.float32)}


def fast_cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=1e-2, device="cpu", val_fraction=0.2, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def train_interrupted_at(monkeypatch, call: int, *args, **kwargs):
    """``train(*args)`` with a KeyboardInterrupt raised at the ``call``-th loss call."""
    calls = {"n": 0}
    real_loss = Dummy.loss

    def flaky_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_loss(self, batch)

    monkeypatch.setattr(Dummy, "loss", flaky_loss)
    try:
        return train(*args, **kwargs)
    finally:
        monkeypatch.setattr(Dummy, "loss", real_loss)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ helpers


def test_derive_seed_and_permutation_depend_only_on_seed_and_epoch():
    assert derive_seed(3, "perm", 1) == derive_seed(3, "perm", 1)
    assert derive_seed(3, "perm", 1) != derive_seed(3, "perm", 2)
    assert 0 <= derive_seed(-5, "x") < 2**63
    torch.manual_seed(123)  # the global RNG must not matter
    p1 = epoch_permutation(50, seed=1, epoch=4)
    torch.manual_seed(999)
    assert torch.equal(p1, epoch_permutation(50, seed=1, epoch=4))
    assert not torch.equal(p1, epoch_permutation(50, seed=1, epoch=5))
    assert not torch.equal(p1, epoch_permutation(50, seed=2, epoch=4))
    assert sorted(p1.tolist()) == list(range(50))


def test_shard_indices_cover_the_epoch_evenly():
    perm = epoch_permutation(11, seed=0, epoch=0)
    shards = [shard_indices(perm, r, 3) for r in range(3)]
    assert [s.numel() for s in shards] == [4, 4, 4]  # padded by wrap-around
    assert set(torch.cat(shards).tolist()) == set(range(11))
    # step k of all ranks (per-rank batch b) = perm[k*W*b:(k+1)*W*b] for an unpadded epoch
    perm12 = epoch_permutation(12, seed=0, epoch=0)
    b, W = 2, 2
    sh = [shard_indices(perm12, r, W) for r in range(W)]
    for k in range(3):
        step = torch.cat([s[k * b : (k + 1) * b] for s in sh])
        assert set(step.tolist()) == set(perm12[k * W * b : (k + 1) * W * b].tolist())
    assert torch.equal(shard_indices(perm12, 0, 1), perm12)
    with pytest.raises(ValueError):
        shard_indices(perm12, 2, 2)
    assert shard_indices(torch.arange(1), 1, 4).tolist() == [0]  # tiny epoch still padded


def test_split_validation_counts_and_seeding():
    tr, va = split_validation(20, 0.05, seed=0)
    assert va.numel() == 1 and tr.numel() == 19
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.equal(va, split_validation(20, 0.05, seed=0)[1])
    assert split_validation(100, 0.2, seed=0)[1].numel() == 20
    assert split_validation(20, 0.0, seed=0)[1].numel() == 0
    assert split_validation(1, 0.5, seed=0)[1].numel() == 0  # never the only group
    assert split_validation(3, 0.9, seed=0)[0].numel() == 1  # at least one to train on
    vals = {tuple(split_validation(30, 0.1, seed=s)[1].tolist()) for s in range(5)}
    assert len(vals) > 1


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b, c = make_dummy(1), make_dummy(1), make_dummy(2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert states_equal(a.state_dict(), b.state_dict())
    assert not torch.equal(a.enc.weight, c.enc.weight)


# ------------------------------------------------------------------------------------ training


def test_train_learns_writes_history_checkpoint_and_bundle(tmp_path):
    arrays = make_arrays()
    model = make_dummy()
    res = train(model, arrays, fast_cfg(epochs=4), tmp_path / "run", extra_config={"dose": 1e3})
    assert not res.interrupted and res.epochs_run == 4 and res.bundle_dir == tmp_path / "run"
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert set(h[0]) == {"epoch", "train_loss", "val_loss", "lr", "seconds", "patterns_per_s"}
    assert h[-1]["train_loss"] < 0.7 * h[0]["train_loss"]
    assert all(r["val_loss"] is not None and np.isfinite(r["val_loss"]) for r in h)
    assert res.patterns_per_s > 0 and res.seconds > 0
    assert (tmp_path / "run" / CHECKPOINT_FILE).is_file()

    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in h]
    loaded, config = load_bundle(res.bundle_dir, build=build_dummy)
    data = config["data"]
    assert data["N"] == 8 and data["gridsize"] == 1 and data["n_groups"] == 24
    assert data["n_val_groups"] == 5 and data["n_train_groups"] == 19
    photons = float((arrays["diffraction"].astype(np.float64) ** 2).sum(axis=(-2, -1)).mean())
    assert data["mean_photons_per_pattern"] == pytest.approx(photons, rel=1e-9)
    assert data["offset_mean"] == pytest.approx([0, 0], abs=1e-6)
    assert len(data["train_data_sha256"]) == 64 and data["dose"] == 1e3
    assert config["training"]["epochs"] == 4 and config["seed"] == 0
    # restore_best: the bundle holds the best-validation epoch's weights
    best = min(h, key=lambda r: r["val_loss"])["epoch"]
    assert res.best_epoch == best
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["best_epoch"] == best
    assert states_equal(loaded.state_dict(), ckpt["best_model"])
    assert not states_equal(ckpt["model"], ckpt["best_model"]) or best == 4
    assert states_equal(model.state_dict(), ckpt["best_model"])  # model == bundle on return
    x = torch.from_numpy(arrays["diffraction"][:3])
    model.eval()
    assert torch.equal(loaded.predict(x, None), model.predict(x, None))


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    arrays = make_arrays()
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        m = make_dummy(0, dropout=0.2)
        train(m, arrays, fast_cfg(epochs=2, seed=seed), tmp_path / f"r{i}")
        runs.append(m.state_dict())
    assert states_equal(runs[0], runs[1])
    assert not torch.equal(runs[0]["enc.weight"], runs[2]["enc.weight"])


@pytest.mark.parametrize("stop_at_call", [2, 9, 10])  # epoch 1, epoch 2 train, epoch 2 val
def test_interrupt_then_resume_is_bit_identical(tmp_path, monkeypatch, stop_at_call):
    arrays = make_arrays(G=20)
    cfg = fast_cfg(epochs=3)
    ref_model = make_dummy(0, dropout=0.3)
    ref = train(ref_model, arrays, cfg, tmp_path / "ref")

    model = make_dummy(0, dropout=0.3)
    out = tmp_path / "run"
    res = train_interrupted_at(monkeypatch, stop_at_call, model, arrays, cfg, out)
    assert res.interrupted
    # 16 train groups / batch 4 = 4 steps + 1 validation call per epoch = 5 calls per epoch
    done = (stop_at_call - 1) // 5
    assert res.epochs_run == done and len(res.history) == done
    if done:
        assert res.bundle_dir == out
        ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
        assert ckpt["epoch"] == done
        loaded, _ = load_bundle(out, build=build_dummy)  # a usable bundle of the last epoch
        assert len(list(csv.DictReader((out / "history.csv").open()))) == done
        assert states_equal(loaded.state_dict(), model.state_dict())  # model == bundle
    else:
        assert res.bundle_dir is None and not (out / CHECKPOINT_FILE).exists()

    # with a checkpoint, another init must be overwritten; without one, training starts fresh
    fresh = make_dummy(42 if done else 0, dropout=0.3)
    res2 = train(fresh, arrays, cfg, out, resume=True)
    assert res2.epochs_run == 3 - done and not res2.interrupted
    assert states_equal(fresh.state_dict(), ref_model.state_dict())  # bit-identical
    strip = [
        {k: v for k, v in r.items() if k not in ("seconds", "patterns_per_s")} for r in res2.history
    ]
    assert strip == [
        {k: v for k, v in r.items() if k not in ("seconds", "patterns_per_s")} for r in ref.history
    ]
    assert (out / "model.pt").read_bytes() == (tmp_path / "ref" / "model.pt").read_bytes()


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """A hard kill (no Python handler runs) leaves a checkpoint that resumes exactly."""
    arrays = make_arrays(G=20)
    cfg = fast_cfg(epochs=3)
    ref = make_dummy(0, dropout=0.3)
    train(ref, arrays, cfg, tmp_path / "ref")
    out = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from test_train import Dummy, fast_cfg, make_arrays, make_dummy
        from ptychobench.train import train
        real, calls = Dummy.loss, [0]
        def loss(self, batch):
            calls[0] += 1
            if calls[0] == 13:  # epoch 3, step 3
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, batch)
        Dummy.loss = loss
        train(make_dummy(0, dropout=0.3), make_arrays(G=20), fast_cfg(epochs=3), {str(out)!r})
        """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr[-2000:]
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files
    resumed = make_dummy(7, dropout=0.3)
    res = train(resumed, arrays, cfg, out, resume=True)
    assert res.epochs_run == 1
    assert states_equal(resumed.state_dict(), ref.state_dict())


def test_resume_finished_run_does_nothing_and_missing_checkpoint_starts_fresh(tmp_path, caplog):
    arrays = make_arrays()
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ptychobench.train")
    m = make_dummy()
    res = train(m, arrays, fast_cfg(epochs=2), out, resume=True)  # nothing to resume from
    assert res.epochs_run == 2
    assert "no checkpoint" in caplog.text and "starting fresh" in caplog.text
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sums = (out / "SHA256SUMS").read_text()
    res2 = train(m, arrays, fast_cfg(epochs=2), out, resume=True)
    assert res2.epochs_run == 0 and len(res2.history) == 2
    assert states_equal(before, m.state_dict())
    assert (out / "SHA256SUMS").read_text() == sums
    # a deleted bundle is rewritten from the checkpoint
    (out / "model.pt").unlink()
    train(make_dummy(), arrays, fast_cfg(epochs=2), out, resume=True)
    load_bundle(out, build=build_dummy)
    # more epochs continue the finished run
    res3 = train(make_dummy(), arrays, fast_cfg(epochs=3), out, resume=True)
    assert res3.epochs_run == 1 and [r["epoch"] for r in res3.history] == [1, 2, 3]


def test_resume_refuses_changed_settings_model_or_data(tmp_path):
    arrays = make_arrays()
    out = tmp_path / "run"
    train(make_dummy(), arrays, fast_cfg(epochs=1), out)
    with pytest.raises(TrainingError, match=r"lr \(0\.01 → 0\.02\)"):
        train(make_dummy(), arrays, fast_cfg(epochs=2, lr=2e-2), out, resume=True)
    with pytest.raises(TrainingError, match="model config differs"):
        train(make_dummy(hidden=7), arrays, fast_cfg(epochs=2), out, resume=True)
    with pytest.raises(TrainingError, match="training data differ"):
        train(make_dummy(), make_arrays(seed=1), fast_cfg(epochs=2), out, resume=True)
    (out / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot read the checkpoint"):
        train(make_dummy(), arrays, fast_cfg(epochs=2), out, resume=True)


class Constant(Dummy):
    """Loss that never improves: exercises the plateau schedule and early stopping."""

    def loss(self, batch):
        return super().loss(batch) * 0.0 + 1.0


def test_plateau_schedule_and_early_stopping(tmp_path):
    m = Constant(DummyConfig())
    cfg = fast_cfg(
        epochs=20, plateau_patience=0, plateau_factor=0.5, min_lr=3e-3, early_stopping_patience=3
    )
    res = train(m, make_arrays(), cfg, tmp_path / "run")
    assert res.stopped_early and res.epochs_run == 4 and res.best_epoch == 1
    assert [r["lr"] for r in res.history] == pytest.approx([1e-2, 1e-2, 5e-3, 3e-3])
    # early stopping off
    res = train(
        Constant(DummyConfig()),
        make_arrays(),
        fast_cfg(epochs=5, early_stopping_patience=0),
        tmp_path / "r2",
    )
    assert res.epochs_run == 5 and not res.stopped_early
    # a stopped run resumed does nothing more
    res = train(Constant(DummyConfig()), make_arrays(), cfg, tmp_path / "run", resume=True)
    assert res.epochs_run == 0 and res.stopped_early


# ------------------------------------------------------------------------ stopping criterion


def stop_epoch(losses, patience, min_epochs=0, min_delta=0.0):
    """The (1-based) epoch after which the criterion stops, None if it never does."""
    es = EarlyStopping(patience=patience, min_epochs=min_epochs, min_delta=min_delta)
    for e, loss in enumerate(losses, start=1):
        if es.update(loss):
            return e
    return None


def test_stopping_criterion_stops_on_a_plateau():
    losses = [10, 5, 4, 4, 4, 4, 4]
    assert stop_epoch(losses, patience=3) == 6  # epochs 4, 5, 6 bring nothing below 4
    assert [should_stop(losses[:k], patience=3) for k in range(1, 8)] == [False] * 5 + [True] * 2
    es = EarlyStopping(patience=3)
    for loss in losses[:6]:
        es.update(loss)
    assert (es.best, es.best_epoch, es.bad_epochs, es.epoch, es.stopped) == (4, 3, 3, 6, True)
    assert stop_epoch(losses, patience=0) is None  # 0 disables
    assert stop_epoch(losses, patience=5) is None  # only 4 epochs without improvement
    assert stop_epoch([3, 2, 2, 1, 1, 1], patience=2) == 6  # an improvement resets the count
    assert stop_epoch([1.0, float("nan"), float("nan")], patience=2) == 3  # NaN never improves


@pytest.mark.parametrize("min_epochs", [0, 2, 4, 5, 8])
def test_stopping_criterion_never_stops_before_min_epochs(min_epochs):
    flat = [4.0] * 12  # plateau from epoch 1: epochs 2, 3, 4 without improvement
    assert stop_epoch(flat, patience=3, min_epochs=min_epochs) == max(min_epochs, 4)
    assert stop_epoch(flat, patience=3, min_epochs=13) is None  # beyond the run: max_epochs
    assert stop_epoch(flat, patience=0, min_epochs=min_epochs) is None


def test_stopping_criterion_min_delta_is_relative():
    creep = [(1 - 1e-6) ** k for k in range(10)]  # improves by 1e-6 (relative) every epoch
    assert stop_epoch(creep, patience=3) is None
    assert not should_stop(creep, patience=3)
    assert stop_epoch(creep, patience=3, min_delta=1e-3) == 4  # epochs 2, 3, 4 count as flat
    assert should_stop(creep[:4], patience=3, min_delta=1e-3)
    assert not should_stop(creep[:3], patience=3, min_delta=1e-3)
    es = EarlyStopping(patience=3, min_delta=1e-3)
    for loss in creep[:4]:
        es.update(loss)
    # min_delta only decides progress: the best epoch is still the lowest loss
    assert es.best_epoch == 4 and es.best == creep[3] and es.ref == 1.0 and es.bad_epochs == 3
    # a real improvement (> 0.1 %) resets the count: 0.9995 does not, 0.998 does
    assert stop_epoch([1.0, 0.9995, 0.998, 0.998, 0.998, 0.998], 3, min_delta=1e-3) == 6
    # negative losses (Poisson NLL): the threshold is ref − min_delta·|ref|
    assert stop_epoch([-100.0, -100.05, -100.2, -100.2, -100.2], 2, min_delta=1e-3) == 5
    assert stop_epoch([-100.0, -100.05, -100.09, -100.2], 2, min_delta=1e-3) == 3
    with pytest.raises(ValueError):
        TrainConfig(min_delta=-1e-3)
    with pytest.raises(ValueError):
        TrainConfig(min_epochs=-1)


def read_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_train_stops_on_a_plateau_after_min_epochs_and_records_why(tmp_path):
    cfg = fast_cfg(epochs=20, early_stopping_patience=3, min_epochs=6)
    out = tmp_path / "run"
    res = train(Constant(DummyConfig()), make_arrays(), cfg, out)
    # constant loss: epoch 1 is the best, the plateau (3 epochs) is complete after epoch 4
    assert res.stop_reason == "plateau" and res.stopped_early
    assert res.epochs_run == 6 >= cfg.min_epochs and len(res.history) == 6
    assert res.best_epoch == 1
    extra = read_config(out)["extra"]
    assert extra == {
        "stop_reason": "plateau",
        "stopped_early": True,
        "epochs_completed": 6,
        "best_epoch": 1,
        "best_monitored_loss": 1.0,
        "monitored": "val_loss",
    }
    assert read_config(out)["training"]["min_epochs"] == 6
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert (ckpt["epoch"], ckpt["bad_epochs"], ckpt["stop_ref"]) == (6, 5, 1.0)
    # resumed: nothing more to do, the reason stays
    res2 = train(Constant(DummyConfig()), make_arrays(), cfg, out, resume=True)
    assert res2.epochs_run == 0 and res2.stop_reason == "plateau"
    # patience 0: no early stopping, the run goes to max_epochs
    res3 = train(
        Constant(DummyConfig()),
        make_arrays(),
        fast_cfg(epochs=5, early_stopping_patience=0, min_epochs=2),
        tmp_path / "r3",
    )
    assert res3.stop_reason == "max_epochs" and not res3.stopped_early and res3.epochs_run == 5
    assert read_config(tmp_path / "r3")["extra"]["stop_reason"] == "max_epochs"
    # min_epochs beyond epochs: max_epochs wins
    res4 = train(
        Constant(DummyConfig()),
        make_arrays(),
        fast_cfg(epochs=4, early_stopping_patience=1, min_epochs=9),
        tmp_path / "r4",
    )
    assert res4.stop_reason == "max_epochs" and res4.epochs_run == 4


def test_train_min_delta_stops_a_slow_run_without_changing_its_trajectory(tmp_path):
    arrays = make_arrays()
    cfg = fast_cfg(epochs=5, lr=3e-3, early_stopping_patience=2)
    ref = train(make_dummy(), arrays, cfg, tmp_path / "a")
    assert ref.stop_reason == "max_epochs" and ref.epochs_run == 5
    vals = [r["val_loss"] for r in ref.history]
    assert all(b < a for a, b in zip(vals, vals[1:], strict=False))  # it keeps improving ...
    assert all(b > 0.5 * a for a, b in zip(vals, vals[1:], strict=False))  # ... by < 50 %
    cfg = fast_cfg(epochs=5, lr=3e-3, early_stopping_patience=2, min_epochs=3, min_delta=0.5)
    res = train(make_dummy(), arrays, cfg, tmp_path / "b")
    # epoch 1 improves on +inf, epochs 2 and 3 are < 50 % better: plateau after epoch 3
    assert res.stop_reason == "plateau" and res.epochs_run == 3
    strip = [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "lr")} for r in res.history]
    assert strip == [
        {k: r[k] for k in ("epoch", "train_loss", "val_loss", "lr")} for r in ref.history[:3]
    ]
    assert res.best_epoch == 3  # still the lowest validation loss
    assert read_config(tmp_path / "b")["extra"]["best_epoch"] == 3


def test_train_interrupt_records_the_reason_then_resume_finishes(tmp_path, monkeypatch):
    arrays = make_arrays(G=20)
    cfg = fast_cfg(epochs=3)
    # epoch 2 (5 loss calls per epoch)
    out = tmp_path / "run"
    res = train_interrupted_at(monkeypatch, 7, make_dummy(), arrays, cfg, out)
    assert res.interrupted and res.stop_reason == "interrupted" and res.epochs_run == 1
    extra = read_config(out)["extra"]
    assert extra["stop_reason"] == "interrupted" and extra["epochs_completed"] == 1
    res2 = train(make_dummy(), arrays, cfg, out, resume=True)
    assert res2.stop_reason == "max_epochs" and res2.epochs_run == 2
    assert read_config(out)["extra"]["stop_reason"] == "max_epochs"


def test_interrupt_resume_with_min_delta_stops_where_an_uninterrupted_run_does(
    tmp_path, monkeypatch
):
    arrays = make_arrays()
    cfg = fast_cfg(epochs=8, lr=3e-3, early_stopping_patience=1, min_epochs=5, min_delta=0.13)
    ref = train(make_dummy(), arrays, cfg, tmp_path / "ref")
    # val loss falls by 14.5, 12.1, 11.8, 11.4 % per epoch: epoch 3 and 5 fall short of 13 % of
    # the last improvement (epochs 2 and 4); epoch 5 is the first at or after min_epochs
    assert ref.stop_reason == "plateau" and ref.epochs_run == 5 and ref.best_epoch == 5
    # epoch 4 (5 train steps + 2 validation calls per epoch)
    out = tmp_path / "run"
    res = train_interrupted_at(monkeypatch, 3 * 7 + 2, make_dummy(), arrays, cfg, out)
    assert res.interrupted and res.epochs_run == 3
    # the reference loss of the last improvement (epoch 2), not the best (epoch 3), is stored
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["stop_ref"] == ref.history[1]["val_loss"] and ckpt["bad_epochs"] == 1
    res2 = train(make_dummy(), arrays, cfg, out, resume=True)
    assert res2.stop_reason == "plateau" and res2.epochs_run == 2 and res2.best_epoch == 5
    assert (out / "model.pt").read_bytes() == (tmp_path / "ref" / "model.pt").read_bytes()


def test_resume_may_change_min_epochs_and_patience_but_not_min_delta(tmp_path):
    arrays = make_arrays()
    out = tmp_path / "run"
    # constant loss, patience 3: not yet stopped after 3 epochs (2 without improvement)
    short = train(
        Constant(DummyConfig()), arrays, fast_cfg(epochs=3, early_stopping_patience=3), out
    )
    assert short.stop_reason == "max_epochs"
    with pytest.raises(TrainingError, match=r"min_delta \(0\.0 → 0\.001\)"):
        cfg = fast_cfg(epochs=20, early_stopping_patience=3, min_delta=1e-3)
        train(Constant(DummyConfig()), arrays, cfg, out, resume=True)
    cfg = fast_cfg(epochs=20, early_stopping_patience=3, min_epochs=7)
    resumed = train(Constant(DummyConfig()), arrays, cfg, out, resume=True)
    fresh = train(Constant(DummyConfig()), arrays, cfg, tmp_path / "fresh")
    assert resumed.stop_reason == fresh.stop_reason == "plateau"
    assert resumed.epochs_run == 4 and len(resumed.history) == fresh.epochs_run == 7
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in fresh.history]


def test_resume_accepts_a_checkpoint_from_before_min_epochs_and_min_delta(tmp_path):
    arrays = make_arrays()
    out = tmp_path / "run"
    cfg = fast_cfg(epochs=2, early_stopping_patience=2)
    train(Constant(DummyConfig()), arrays, cfg, out)
    path = out / CHECKPOINT_FILE
    ckpt = torch.load(path, weights_only=True)
    for key in ("min_epochs", "min_delta"):
        del ckpt["training"][key]
    del ckpt["stop_ref"]
    torch.save(ckpt, path)
    res = train(
        Constant(DummyConfig()),
        arrays,
        fast_cfg(epochs=5, early_stopping_patience=2),
        out,
        resume=True,
    )
    # epoch 1 best; epochs 2 and 3 without improvement: stops after 3, like a fresh run
    assert res.stop_reason == "plateau" and res.epochs_run == 1 and res.best_epoch == 1


def test_study_arm_settings_reach_train_config_and_job_key():
    from ptychobench.arms import ArmContext
    from ptychobench.arms.builtin import NetworkSettings
    from ptychobench.study.design import load_preset
    from ptychobench.study.jobs import job_key, plan

    d = load_preset("quick")
    ctx = ArmContext()
    pinn = d.arm("PtychoPINN").settings
    assert pinn.train_config(ctx).min_epochs == 0 and pinn.train_config(ctx).min_delta == 0.0
    d2 = d.with_arm("PtychoPINN", min_epochs=5, min_delta=1e-3)
    tc = d2.arm("PtychoPINN").settings.train_config(ctx)
    assert (tc.min_epochs, tc.min_delta) == (5, 1e-3)
    assert d2.arm("Baseline").settings.train_config(ctx).min_epochs == 0
    job = next(j for j in plan(d) if j.kind == "fit" and j.arm == "PtychoPINN")
    deps = {"view": {"data/x.npz": "a" * 64}}
    k = job_key(job, d, deps)
    for upd in ({"min_epochs": 5}, {"min_delta": 1e-3}):
        assert job_key(job, d.with_arm("PtychoPINN", **upd), deps) != k
    with pytest.raises(ValueError):
        NetworkSettings(min_delta=-1.0)


def test_no_validation_monitors_train_loss(tmp_path):
    res = train(make_dummy(), make_arrays(), fast_cfg(epochs=2, val_fraction=0.0), tmp_path / "run")
    assert all(r["val_loss"] is None for r in res.history)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert rows[0]["val_loss"] == ""
    assert res.best_epoch == 2  # the training loss went down


def test_gradient_clipping_bounds_the_first_step(tmp_path):
    arrays = make_arrays()
    arrays["diffraction"] *= 100.0  # huge gradients

    def first_step_change(clip):
        m = make_dummy()
        w0 = m.enc.weight.detach().clone()
        cfg = fast_cfg(epochs=1, batch_size=32, val_fraction=0.0, grad_clip=clip, lr=1e-3)
        train(m, arrays, cfg, tmp_path / f"c{clip}")
        return (m.enc.weight.detach() - w0).abs().max().item()

    # Adam normalises step size, so both moves are ~lr; clipping must not break training
    assert first_step_change(1e-3) == pytest.approx(first_step_change(None), rel=0.05)


def test_non_finite_loss_and_bad_arrays(tmp_path):
    class Exploding(Dummy):
        def loss(self, batch):
            return super().loss(batch) * float("nan")

    with pytest.raises(TrainingError, match="non-finite training loss .* epoch 1, step 1"):
        train(Exploding(DummyConfig()), make_arrays(), fast_cfg(), tmp_path / "a")
    arrays = make_arrays()
    arrays["diffraction"][0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(make_dummy(), arrays, fast_cfg(), tmp_path / "b")
    with pytest.raises(ValueError, match="offsets must be"):
        train(
            make_dummy(),
            {**make_arrays(), "offsets": np.zeros((3, 1, 2))},
            fast_cfg(),
            tmp_path / "c",
        )
    with pytest.raises(ValueError, match="unknown training arrays"):
        train(make_dummy(), {**make_arrays(), "coords": np.zeros(3)}, fast_cfg(), tmp_path / "d")
    with pytest.raises(ValueError):
        TrainConfig(epochs=1, bogus=1)


def test_config_from_dict_and_progress_modes(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="ptychobench.train")
    cfg = {"epochs": 2, "batch_size": 8, "device": "cpu", "log_every_s": 1e-9}
    train(make_dummy(), make_arrays(), cfg, tmp_path / "a", progress=False)
    assert "epoch 1/2 step 1/" in caplog.text  # periodic lines
    assert "epoch 2/2: train" in caplog.text  # epoch-end line
    train(make_dummy(), make_arrays(), cfg, tmp_path / "b", progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "patterns/s" in err


def test_real_pinn_trains_two_epochs_and_round_trips(tmp_path):
    from ptychobench.models import build_model

    N, G = 32, 12
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:N, :N] - N // 2
    probe = np.exp(-(xx**2 + yy**2) / (2 * 5.0**2)).astype(np.complex64)
    obj = np.exp(1j * rng.uniform(-0.5, 0.5, size=(G, 4, N, N)))
    counts = np.abs(np.fft.fftshift(np.fft.fft2(obj * probe, norm="ortho"), axes=(-2, -1))) ** 2
    diff = np.sqrt(rng.poisson(counts * 50.0)).astype(np.float32)
    offsets = rng.uniform(-3, 3, size=(G, 4, 2))
    offsets -= offsets.mean(axis=1, keepdims=True)
    arrays = {"diffraction": diff, "offsets": offsets.astype(np.float32)}
    mcfg = {"kind": "pinn", "N": N, "gridsize": 2, "n_filters_scale": 0.25}
    model = seeded_build(lambda: build_model(mcfg, torch.from_numpy(probe)), 0)
    cfg = fast_cfg(epochs=2, batch_size=4, lr=1e-3, val_fraction=0.25)
    res = train(model, arrays, cfg, tmp_path / "pinn")
    assert res.epochs_run == 2
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in res.history)
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]
    loaded, config = load_bundle(res.bundle_dir)  # the real build_model
    assert config["model"]["n_filters_scale"] == 0.25 and config["data"]["gridsize"] == 2
    d = torch.from_numpy(diff[:2])
    o = torch.from_numpy(arrays["offsets"][:2])
    model.load_state_dict(loaded.state_dict())
    model.eval()
    out = loaded.predict(d, o)
    assert out.shape == (2, N, N) and out.dtype == torch.complex64
    assert torch.equal(out, model.predict(d, o))
    assert torch.equal(loaded.probe, torch.from_numpy(probe))


def test_real_pinn_interrupt_resume_bit_identical(tmp_path, monkeypatch):
    from ptychobench.models import PtychoPINN, build_model

    N, G = 32, 10
    rng = np.random.default_rng(1)
    probe = torch.ones(N, N, dtype=torch.complex64)
    arrays = {
        "diffraction": rng.uniform(0, 2, size=(G, 4, N, N)).astype(np.float32),
        "offsets": rng.uniform(-2, 2, size=(G, 4, 2)).astype(np.float32),
    }
    arrays["offsets"] -= arrays["offsets"].mean(axis=1, keepdims=True)
    mcfg = {"kind": "pinn", "N": N, "gridsize": 2, "n_filters_scale": 0.25}
    cfg = fast_cfg(epochs=2, batch_size=4, lr=1e-3, val_fraction=0.2)
    ref = seeded_build(lambda: build_model(mcfg, probe), 0)
    train(ref, arrays, cfg, tmp_path / "ref")

    real_loss = PtychoPINN.loss
    calls = {"n": 0}

    def flaky_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, first step (2 train steps + 2 val calls per epoch)
            raise KeyboardInterrupt
        return real_loss(self, batch)

    monkeypatch.setattr(PtychoPINN, "loss", flaky_loss)
    res = train(seeded_build(lambda: build_model(mcfg, probe), 0), arrays, cfg, tmp_path / "run")
    monkeypatch.setattr(PtychoPINN, "loss", real_loss)
    assert res.interrupted and res.epochs_run == 1
    resumed = seeded_build(lambda: build_model(mcfg, probe), 5)
    train(resumed, arrays, cfg, tmp_path / "run", resume=True)
    assert states_equal(resumed.state_dict(), ref.state_dict())


# ------------------------------------------------------------------------------------ DDP


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_ddp_two_processes_match_single_process_with_double_batch(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import torch
        from test_train import fast_cfg, make_arrays, make_dummy
        from ptychobench.train import train
        model = make_dummy(0)
        res = train(model, make_arrays(G=20), fast_cfg(epochs=2, batch_size=2, val_fraction=0.2),
                    {str(tmp_path / "ddp")!r}, progress=False)
        torch.save(model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
        with open({str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.txt", "w") as f:
            f.write(json.dumps([r["train_loss"] for r in res.history]))
    """)
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS_DIR)}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert states_equal(w0, w1)  # DDP kept the replicas in sync
    losses0 = (tmp_path / "rank0.txt").read_text()
    assert losses0 == (tmp_path / "rank1.txt").read_text()  # all-reduced losses

    # one process with twice the per-rank batch takes the same steps (16 train groups: no padding)
    single = make_dummy(0)
    res = train(
        single,
        make_arrays(G=20),
        fast_cfg(epochs=2, batch_size=4, val_fraction=0.2),
        tmp_path / "single",
    )
    for k, v in single.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6)
    assert json.loads(losses0) == pytest.approx([r["train_loss"] for r in res.history], rel=1e-5)
    # only rank 0 wrote: one checkpoint and one valid bundle
    loaded, config = load_bundle(tmp_path / "ddp", build=build_dummy)
    ckpt = torch.load(tmp_path / "ddp" / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["data"]["n_groups"] == 20


def test_time_budget_stops_after_the_epoch_that_would_overrun_and_says_so(tmp_path):
    arrays = make_arrays()
    # a cap far below one epoch: the first epoch always runs, no second one starts
    res = train(make_dummy(), arrays, fast_cfg(epochs=5, max_seconds=1e-6), tmp_path / "a")
    assert res.stop_reason == "time_budget" and res.epochs_run == 1 and not res.stopped_early
    assert read_config(tmp_path / "a")["extra"]["stop_reason"] == "time_budget"
    # a generous cap changes nothing: same epochs, same weights as no cap
    capped = train(make_dummy(), arrays, fast_cfg(epochs=3, max_seconds=3600.0), tmp_path / "b")
    plain = train(make_dummy(), arrays, fast_cfg(epochs=3), tmp_path / "c")
    assert capped.stop_reason == plain.stop_reason == "max_epochs" and capped.epochs_run == 3
    assert (tmp_path / "b" / "model.pt").read_bytes() == (tmp_path / "c" / "model.pt").read_bytes()
    with pytest.raises(ValueError, match="max_seconds"):
        fast_cfg(max_seconds=0.0)
