"""Model bundles: round trip, hash verification, no pickle, atomic publish (SPEC §5.3, §10)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ptychobench.models import bundle as B
from ptychobench.models.bundle import BundleError, load_bundle, save_bundle, verify_bundle


class TinyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["pinn", "baseline"] = "pinn"
    N: int = 8
    hidden: int = 5


class Tiny(nn.Module):
    """A model that follows the protocol: kind, config, loss, predict, complex probe buffer."""

    def __init__(self, config: TinyConfig, probe: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.kind = config.kind
        n = config.N * config.N
        self.enc = nn.Linear(n, config.hidden)
        self.dec = nn.Linear(config.hidden, 2 * n)
        if probe is None:
            probe = torch.ones(config.N, config.N, dtype=torch.complex64)
        self.register_buffer("probe", probe.to(torch.complex64).clone())

    def predict(self, diffraction: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        N = self.config.N
        x = diffraction.reshape(-1, N * N)
        out = self.dec(torch.tanh(self.enc(x))).reshape(-1, 2, N, N)
        return torch.complex(out[:, 0], out[:, 1]) * self.probe

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = self.predict(batch["diffraction"], batch["offsets"])
        return (pred.abs() - batch["diffraction"].reshape(pred.shape)).square().mean()


def build_tiny(cfg: dict, probe: torch.Tensor | None) -> Tiny:
    return Tiny(TinyConfig.model_validate(cfg), probe)


HISTORY = [
    {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "lr": 1e-3, "seconds": 0.1},
    {"epoch": 2, "train_loss": 0.25, "val_loss": None, "lr": 5e-4, "seconds": 0.2},
]
TRAINING = {"epochs": 2, "seed": 7, "lr": 1e-3}
DATA = {"N": 8, "gridsize": 1, "mean_photons_per_pattern": 1000.0, "position_mean": [1.0, 2.0]}


def make_model(seed: int = 0, **kw) -> Tiny:
    torch.manual_seed(seed)
    probe = torch.randn(8, 8, dtype=torch.complex64)
    return Tiny(TinyConfig(**kw), probe)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Tiny, Path]:
    model = make_model()
    path = save_bundle(model, tmp_path / "m", history=HISTORY, training=TRAINING, data=DATA)
    return model, path


def rewrite(path: Path, name: str, data: bytes, *, update_sums: bool = True) -> None:
    """Replace a bundle file; optionally update SHA256SUMS so only the content checks can object."""
    (path / name).write_bytes(data)
    if update_sums:
        lines = []
        for line in (path / "SHA256SUMS").read_text().splitlines():
            digest, fname = line.split("  ")
            if fname == name:
                digest = hashlib.sha256(data).hexdigest()
            lines.append(f"{digest}  {fname}")
        (path / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    rewrite(path, "config.json", json.dumps(cfg).encode())


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_same_outputs(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(B.BUNDLE_FILES)
    loaded, config = load_bundle(path, build=build_tiny)
    assert not loaded.training
    x = torch.rand(3, 1, 8, 8)
    off = torch.zeros(3, 1, 2)
    assert torch.equal(loaded.predict(x, off), model.predict(x, off))
    assert torch.equal(loaded.probe, model.probe)  # complex buffer survives
    assert config["schema_version"] == 1
    assert config["kind"] == "pinn"
    assert config["model"] == {"kind": "pinn", "N": 8, "hidden": 5}
    assert config["training"] == TRAINING and config["seed"] == 7
    assert config["data"] == DATA
    assert set(config["versions"]) == {"ptychobench", "torch", "python"}
    assert config["versions"]["torch"] == torch.__version__


def test_history_csv_and_sums_format(saved):
    _, path = saved
    rows = list(csv.DictReader((path / "history.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert [float(r["train_loss"]) for r in rows] == [0.5, 0.25]
    assert rows[1]["val_loss"] == ""  # None → empty cell
    sums = (path / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 3
    for line in sums:
        digest, name = line.split("  ")
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=path, capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_state_dict_override_and_extra(tmp_path):
    model = make_model(0)
    other = make_model(1)
    path = save_bundle(
        model,
        tmp_path / "m",
        history=[],
        training=TRAINING,
        data=DATA,
        extra={"note": "best epoch"},
        state_dict=other.state_dict(),
    )
    loaded, config = load_bundle(path, build=build_tiny)
    assert torch.equal(loaded.enc.weight, other.enc.weight)
    assert not torch.equal(loaded.enc.weight, model.enc.weight)
    assert config["extra"] == {"note": "best epoch"}


def test_real_models_round_trip(tmp_path):
    from ptychobench.models import build_model

    for kind in ("pinn", "baseline"):
        cfg = {"kind": kind, "N": 16, "gridsize": 1, "n_filters_scale": 0.125}
        torch.manual_seed(0)
        probe = torch.randn(16, 16, dtype=torch.complex64)
        model = build_model(cfg, probe)
        path = save_bundle(model, tmp_path / kind, history=HISTORY, training=TRAINING, data=DATA)
        loaded, config = load_bundle(path)  # default builder: ptychobench.models.build_model
        assert config["kind"] == kind and loaded.kind == kind
        x = torch.rand(2, 1, 16, 16)
        off = torch.zeros(2, 1, 2)
        model.eval()
        assert torch.equal(loaded.predict(x, off), model.predict(x, off))


# ------------------------------------------------------------------------------------ tampering


def flip_byte(p: Path, at: int = -10) -> None:
    data = bytearray(p.read_bytes())
    data[at] ^= 0x01
    p.write_bytes(bytes(data))


def test_tampered_model_pt_names_the_file(saved):
    _, path = saved
    flip_byte(path / "model.pt")
    with pytest.raises(BundleError, match=r"model\.pt: SHA-256 mismatch \(expected [0-9a-f]{8}…"):
        load_bundle(path, build=build_tiny)
    with pytest.raises(BundleError, match="model.pt"):
        verify_bundle(path)


def test_tampered_config_names_the_file(saved):
    _, path = saved
    text = (path / "config.json").read_text().replace('"hidden": 5', '"hidden": 6')
    (path / "config.json").write_text(text)
    with pytest.raises(BundleError, match=r"config\.json: SHA-256 mismatch"):
        load_bundle(path, build=build_tiny)


@pytest.mark.parametrize(
    "damage, pattern",
    [
        (lambda p: (p / "SHA256SUMS").unlink(), r"SHA256SUMS is missing"),
        (lambda p: (p / "SHA256SUMS").write_text("not a checksum line\n"), r"SHA256SUMS: line 1"),
        (lambda p: (p / "history.csv").unlink(), r"history\.csv: file is missing"),
        (
            lambda p: (p / "SHA256SUMS").write_text(
                "".join(x + "\n" for x in (p / "SHA256SUMS").read_text().splitlines()[:2])
            ),
            r"SHA256SUMS: no entry for history\.csv",
        ),
        (
            lambda p: (p / "SHA256SUMS").write_text(
                (p / "SHA256SUMS").read_text() + "0" * 64 + "  ../evil\n"
            ),
            r"unexpected file",
        ),
        (lambda p: shutil.rmtree(p), r"not a directory"),
    ],
)
def test_damaged_bundle_is_refused(saved, damage, pattern):
    _, path = saved
    damage(path)
    with pytest.raises(BundleError, match=pattern):
        load_bundle(path, build=build_tiny)


def test_unknown_schema_version(saved):
    _, path = saved
    edit_config(path, lambda c: c.update(schema_version=99))
    verify_bundle(path)  # hashes are fine ...
    with pytest.raises(BundleError, match=r"config\.json: unknown schema_version 99"):
        load_bundle(path, build=build_tiny)  # ... the content is not


def test_unknown_kind(saved):
    _, path = saved
    edit_config(path, lambda c: c.update(kind="transformer"))
    with pytest.raises(BundleError, match=r"unknown model kind 'transformer' at key 'kind'"):
        load_bundle(path, build=build_tiny)


def test_invalid_model_config_names_the_key(saved):
    _, path = saved
    edit_config(path, lambda c: c["model"].update(hidden="many"))
    with pytest.raises(BundleError, match=r"key model\.hidden does not describe a buildable"):
        load_bundle(path, build=build_tiny)


def test_weights_that_do_not_fit(saved):
    _, path = saved
    edit_config(path, lambda c: c["model"].update(hidden=7))
    with pytest.raises(BundleError, match=r"model\.pt: weights do not fit .*size mismatch"):
        load_bundle(path, build=build_tiny)


class Payload:
    """An arbitrary object: unpickling it would call open(marker, 'w')."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_is_refused_even_with_matching_hash(saved, tmp_path):
    _, path = saved
    marker = tmp_path / "pwned"
    blob_path = tmp_path / "evil.pt"
    torch.save({"enc.weight": Payload(str(marker))}, blob_path)
    rewrite(path, "model.pt", blob_path.read_bytes())
    verify_bundle(path)  # the hash matches: only weights_only loading protects us
    with pytest.raises(BundleError, match=r"model\.pt: refused to load .*weights_only=True"):
        load_bundle(path, build=build_tiny)
    assert not marker.exists()  # nothing was executed


def test_not_a_state_dict(saved, tmp_path):
    _, path = saved
    blob = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], blob)
    rewrite(path, "model.pt", blob.read_bytes())
    with pytest.raises(BundleError, match=r"model\.pt: not a state dict"):
        load_bundle(path, build=build_tiny)


# ------------------------------------------------------------------------------------ atomicity


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".bundle-" in p.name]


def test_replace_is_atomic_and_keeps_other_files(tmp_path):
    path = tmp_path / "m"
    save_bundle(make_model(0), path, history=HISTORY, training=TRAINING, data=DATA)
    (path / "checkpoint.pt").write_bytes(b"resume state")
    (path / "logs").mkdir()
    (path / "logs" / "a.txt").write_text("x")
    second = make_model(1)
    save_bundle(second, path, history=HISTORY[:1], training=TRAINING, data=DATA)
    assert leftovers(tmp_path) == []
    assert (path / "checkpoint.pt").read_bytes() == b"resume state"
    assert (path / "logs" / "a.txt").read_text() == "x"
    loaded, _ = load_bundle(path, build=build_tiny)
    assert torch.equal(loaded.enc.weight, second.enc.weight)
    assert len(list(csv.DictReader((path / "history.csv").open()))) == 1


def test_failed_save_leaves_old_bundle(tmp_path, monkeypatch):
    path = tmp_path / "m"
    first = make_model(0)
    save_bundle(first, path, history=HISTORY, training=TRAINING, data=DATA)
    real_replace = B.os.replace

    def failing_replace(src, dst):
        if Path(dst) == path and ".bundle-new-" in Path(src).name:
            raise OSError("disk on fire")
        return real_replace(src, dst)

    monkeypatch.setattr(B.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_bundle(make_model(1), path, history=HISTORY, training=TRAINING, data=DATA)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    loaded, _ = load_bundle(path, build=build_tiny)
    assert torch.equal(loaded.enc.weight, first.enc.weight)


def test_interrupted_swap_is_repaired(tmp_path):
    path = tmp_path / "m"
    model = make_model(3)
    save_bundle(model, path, history=HISTORY, training=TRAINING, data=DATA)
    # simulate a kill between "rename old away" and "rename new in"
    path.rename(tmp_path / ".m.bundle-new-abc")
    (tmp_path / ".m.bundle-old-abc").mkdir()
    loaded, _ = load_bundle(path, build=build_tiny)
    assert torch.equal(loaded.enc.weight, model.enc.weight)
    assert leftovers(tmp_path) == []


def test_refuses_unknown_kind_and_nan_is_strict_json(tmp_path):
    model = make_model()
    model.kind = "mystery"
    with pytest.raises(BundleError, match="kind 'mystery'"):
        save_bundle(model, tmp_path / "x", history=[], training=TRAINING, data=DATA)
    model.kind = "pinn"
    path = save_bundle(
        model, tmp_path / "y", history=[], training=TRAINING, data={"x": float("nan")}
    )
    assert json.loads((path / "config.json").read_text())["data"] == {"x": None}
