"""The ``command`` arm: any program that reads our dataset files and writes a reconstruction file.

In a design::

    [arms.MySolver]
    type = "command"
    command = "python my_solver.py {test} {out}"      # required
    fit = "python my_train.py {train} {artifact}"     # optional: a fit step on the training view
    timeout_s = 600

Placeholders: ``{test}`` the dataset to reconstruct (NPZ, native layout: ``diffraction`` amplitudes,
``xcoords``/``ycoords``, ``probeGuess``; the truth removed, its frame in ``metadata.frame_shape``),
``{out}`` the reconstruction file to write (``reconstructed_object`` (H, W) complex in that frame,
``coverage`` (H, W); :mod:`ptychobench.data.recon`), ``{train}`` the training view, ``{artifact}``
a directory the fit step fills and the reconstruct step reads, ``{seed}`` the repeat's seed,
``{device}`` the study's device. Each placeholder is substituted shell-quoted. The command runs
through the shell in the study's environment; its wall time is measured by us (``infer_s``; the
fit's as ``train_s``); its command lines and settings are in the jobs' keys, so an edit re-runs
exactly its jobs.
"""

from __future__ import annotations

import os
import shlex
import string
import subprocess
import time
from pathlib import Path

from pydantic import Field, field_validator

from ptychobench.arms.base import Arm, ArmSettings, Needs

__all__ = ["CommandArm", "CommandSettings", "CommandFailed", "PLACEHOLDERS"]

RECONSTRUCT_PLACEHOLDERS = frozenset({"test", "out", "artifact", "seed", "device"})
FIT_PLACEHOLDERS = frozenset({"train", "artifact", "seed", "device"})
PLACEHOLDERS = RECONSTRUCT_PLACEHOLDERS | FIT_PLACEHOLDERS
_FIT_SECONDS = "fit_seconds.txt"


class CommandFailed(RuntimeError):
    """The command exited non-zero or ran past its timeout (message: one line, the arm)."""


def _fields(template: str, allowed: frozenset[str], what: str) -> set[str]:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{what}: not a valid command template: {exc}") from None
    bad = sorted(n for n in names if n not in allowed)
    if bad:
        raise ValueError(
            f"{what}: unknown placeholder {{{bad[0]}}}; expected one of "
            + ", ".join("{" + a + "}" for a in sorted(allowed))
        )
    return names


class CommandSettings(ArmSettings):
    type: str = "command"
    command: str = Field(..., min_length=1, description="reconstruct: {test} → {out}")
    fit: str | None = Field(None, min_length=1, description="optional fit: {train} → {artifact}")
    timeout_s: float | None = Field(None, gt=0.0, description="kill the command after this long")
    halves: bool = Field(
        True, description="also reconstruct the two half-scans (the half-scan FRC; 2 more runs)"
    )

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        names = _fields(v, RECONSTRUCT_PLACEHOLDERS, "command")
        missing = [n for n in ("test", "out") if n not in names]
        if missing:
            raise ValueError(f"command: expected the placeholder {{{missing[0]}}}")
        return v

    @field_validator("fit")
    @classmethod
    def _fit(cls, v: str | None) -> str | None:
        if v is not None:
            names = _fields(v, FIT_PLACEHOLDERS, "fit")
            missing = [n for n in ("train", "artifact") if n not in names]
            if missing:
                raise ValueError(f"fit: expected the placeholder {{{missing[0]}}}")
        return v


class CommandArm(Arm):
    type_name = "command"
    Settings = CommandSettings
    summary = "an external command: reads our dataset file, writes a reconstruction file"

    @property
    def needs(self) -> Needs:  # type: ignore[override]
        return Needs(train=self.settings.fit is not None)

    def key(self):
        return {"type": "command", "settings": self.settings.model_dump(mode="json")}

    def _run(self, template: str, values: dict[str, str], cwd: Path, what: str) -> float:
        line = template.format(**{k: shlex.quote(v) for k, v in values.items()})
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                line,
                shell=True,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=self.settings.timeout_s,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(
                f"{self.name}: {what} command ran past timeout_s = {self.settings.timeout_s:g} s"
            ) from None
        seconds = time.perf_counter() - t0
        (cwd / f"{what}.log").write_text(f"$ {line}\n{p.stdout}\n{p.stderr}")
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[-1]
            raise CommandFailed(
                f"{self.name}: {what} command exited {p.returncode}"
                + (f": {tail[:200]}" if tail else "")
            )
        return seconds

    def fit(self, train, artifact: Path, ctx, *, resume: bool = False) -> None:
        from ptychobench.data.io import save

        artifact.mkdir(parents=True, exist_ok=True)
        work = artifact.parent / f".{artifact.name}.work"
        work.mkdir(parents=True, exist_ok=True)
        train_file = work / "train.npz"
        save(train, train_file)
        seconds = self._run(
            self.settings.fit,  # type: ignore[arg-type]
            {"train": str(train_file), "artifact": str(artifact), "seed": str(ctx.seed),
             "device": ctx.device},
            work,
            "fit",
        )
        (artifact / _FIT_SECONDS).write_text(repr(seconds))

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        import tempfile

        from ptychobench.data.io import save
        from ptychobench.data.recon import ReconstructionError, read_reconstruction

        with tempfile.TemporaryDirectory(prefix="ptychobench-command-") as tmp:
            work = Path(tmp)
            test_file, out_file = work / "test.npz", work / "recon.npz"
            save(ds, test_file)
            values = {"test": str(test_file), "out": str(out_file), "seed": str(ctx.seed),
                      "device": ctx.device,
                      "artifact": str(artifact) if artifact is not None else ""}
            seconds = self._run(self.settings.command, values, work, "reconstruct")
            if not out_file.exists():
                raise CommandFailed(f"{self.name}: the command wrote no file at {{out}}")
            try:
                rec = read_reconstruction(out_file, shape=ds.frame_shape)
            except ReconstructionError as exc:
                msg = str(exc).replace(str(out_file), "{out}")
                raise CommandFailed(f"{self.name}: {msg}") from None
        train_s = None
        if artifact is not None and (artifact / _FIT_SECONDS).exists():
            train_s = float((artifact / _FIT_SECONDS).read_text())
        rec.metadata.update(
            arm=self.name, kind="command", seconds=seconds, infer_s=seconds, refine_s=0.0,
            train_s=train_s if self.settings.fit else 0.0,
        )
        return rec

