"""Arms of independent solvers: CDTools and PMACE (the optional ``[peers]`` extra).

Each adapts a function of :mod:`ptychobench.peers` and declares the library it needs in
``requires``; a design that names one without the extra installed is refused when it is read, in
one line, before any job runs (:func:`ptychobench.arms.registry.resolve`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ptychobench.arms.base import Arm, ArmSettings


class CDToolsSettings(ArmSettings):
    """CDTools FancyPtycho, object only, Adam (see :class:`ptychobench.peers.CDToolsConfig`)."""

    epochs: int = Field(100, ge=1)
    lr: float = Field(0.005, gt=0)
    final_lr: float = Field(0.001, gt=0)
    final_fraction: float = Field(0.25, ge=0, lt=1)
    batch_size: int = Field(15, ge=1)
    loss: Literal["amplitude mse", "poisson nll"] = "amplitude mse"
    halves: bool = Field(True, description="also reconstruct the two half-scans")
    test_only: bool = Field(False, description="reconstruct the test split only")


class CDToolsArm(Arm):
    type_name = "CDTools"
    Settings = CDToolsSettings
    requires = ("cdtools",)
    context_fields = {"reconstruct": ("solver_seed", "data_source")}
    color = "C8"
    summary = "CDTools (autodiff ptychography, Adam), known probe fixed, flat start"

    def solver(self) -> str | None:
        return "CDTools"

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.peers import CDToolsConfig, cdtools_reconstruct

        s = self.settings.model_dump(exclude={"halves", "test_only"})
        cfg = CDToolsConfig(**s, device=ctx.device, seed=ctx.solver_seed)
        return cdtools_reconstruct(ds, cfg, arm=self.name)


class PMACESettings(ArmSettings):
    """xptycho's PMACE, known probe fixed (see :class:`ptychobench.peers.PMACEConfig`)."""

    iterations: int = Field(100, ge=1)
    object_data_fit: float = Field(0.6, gt=0, le=1)
    relaxation: float = Field(0.5, ge=0, lt=1)
    halves: bool = Field(True, description="also reconstruct the two half-scans")
    test_only: bool = Field(False, description="reconstruct the test split only")


class PMACEArm(Arm):
    type_name = "PMACE"
    Settings = PMACESettings
    requires = ("xptycho",)
    context_fields = {"reconstruct": ("data_source",)}
    color = "C9"
    summary = "PMACE (xptycho), known probe fixed, flat start, positions rounded to whole pixels"

    def solver(self) -> str | None:
        return "xptycho"

    def iterations(self) -> int | None:
        return self.settings.iterations

    def reconstruct(self, ds, ctx, *, artifact=None, start=None, snapshots=None):
        from ptychobench.peers import PMACEConfig, pmace_reconstruct

        s = self.settings.model_dump(exclude={"halves", "test_only"})
        return pmace_reconstruct(ds, PMACEConfig(**s, device=ctx.device), arm=self.name)
