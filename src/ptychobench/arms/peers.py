"""Arms of independent solvers: CDTools and PMACE (the optional ``[peers]`` extra).

Each adapts a function of :mod:`ptychobench.peers` and declares the library it needs in
``requires``; a design that names one without the extra installed is refused when it is read, in
one line, before any job runs (:func:`ptychobench.arms.registry.resolve`).
"""

from __future__ import annotations

from pydantic import Field

from ptychobench.arms.base import Arm, ArmSettings
from ptychobench.peers import CDToolsConfig, PMACEConfig

#: Settings the study reads, not the solver (:class:`_Study`).
_STUDY_ONLY = {"halves", "test_only"}


class _Study(ArmSettings):
    """What the study reads of a peer arm's table (the rest is the solver's)."""

    halves: bool = Field(True, description="also reconstruct the two half-scans")
    test_only: bool = Field(False, description="reconstruct the test split only")


class CDToolsSettings(CDToolsConfig, _Study):
    """CDTools FancyPtycho, object only, Adam (:class:`ptychobench.peers.CDToolsConfig`)."""


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
        from ptychobench.peers import cdtools_reconstruct

        cfg = CDToolsConfig(**self.settings.model_dump(exclude=_STUDY_ONLY))
        return cdtools_reconstruct(ds, cfg, device=ctx.device, seed=ctx.solver_seed,
                                   arm=self.name)


class PMACESettings(PMACEConfig, _Study):
    """xptycho's PMACE, known probe fixed (:class:`ptychobench.peers.PMACEConfig`)."""


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
        from ptychobench.peers import pmace_reconstruct

        cfg = PMACEConfig(**self.settings.model_dump(exclude=_STUDY_ONLY))
        return pmace_reconstruct(ds, cfg, device=ctx.device, arm=self.name)
