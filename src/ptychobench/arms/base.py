"""The arm interface: one reconstruction method as the study sees it.

An arm has a name (its column in every table), typed settings (a pydantic model read from the
design's ``[arms.<Name>]`` table), declared needs, an optional **fit** step on the training view
(which fills an artifact directory: a cached, resumable study job) and a **reconstruct** step on
a dataset that returns the reconstruction-file contract (:class:`ptychobench.data.recon.
Reconstruction`) with its costs in the metadata (``train_s``, ``infer_s``, ``refine_s``,
``seconds``). It may start from another arm's reconstruction (``start``: the hybrid
PtychoPINN+LSQML is the PtyChi solver started from PtychoPINN) and record convergence snapshots
for the quality-vs-seconds curves.

What an arm is handed: the dataset of its split with the truth removed (``objectGuess`` and
``Y`` are None unless its :class:`Needs` say otherwise; ``frame_shape`` still gives the object
frame); ``probeGuess`` in the data's probe units (:func:`ptychobench.data.dataset.photon_probe`
puts it on the photon scale, expected counts = |FFT_ortho(s·P·O)|²).

The study learns about arms only through this module's :class:`Arm` and the registry
(:mod:`ptychobench.arms.registry`); it never names one. Reconstruction methods live in the layers
below (``ptychobench.iterative``, ``infer``, ``refine``, ``fit``); an arm adapts one of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from ptychobench.data.dataset import PtychoDataset
    from ptychobench.data.recon import Reconstruction

__all__ = [
    "Arm",
    "ArmContext",
    "ArmError",
    "ArmSettings",
    "Needs",
    "Role",
    "Snapshots",
    "slug_of",
]

Role = Literal["method", "floor", "ceiling"]
"""``method``: a verdict candidate. ``floor`` / ``ceiling``: references that bracket what the
data permit (synthetic data only; never a verdict candidate)."""


class ArmError(ValueError):
    """An arm that cannot be used (unknown, bad settings, a plugin that fails to import, a
    command with an unknown placeholder); the message is one line naming the arm."""


class ArmSettings(BaseModel):
    """Base of every arm's settings: unknown keys are refused (the message names the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class Needs:
    """What an arm needs beyond the test diffraction and positions.

    ``train``: a training split (the arm has a fit step). ``truth_patches``: ground-truth object
    patches ``Y`` in the training view (supervised). ``truth_object``: the true object of the
    data it reconstructs (reference arms only: never fair, never a candidate). ``probe``: the
    probe. ``gpu``: it is only usable on a CUDA device (a GPU job on Dask either way).
    """

    train: bool = False
    truth_patches: bool = False
    truth_object: bool = False
    probe: bool = True
    gpu: bool = False


@dataclasses.dataclass(frozen=True)
class ArmContext:
    """What the study tells an arm about one job: the shared settings, not the arm's own.

    ``seed`` is the repeat's training seed (networks, test-time refinement); ``solver_seed``
    the seed of the iterative solvers. The stitch settings (``crop_size_M``,
    ``stitch_weighting``, ``phase_sync``, ``neighbor_count``) are how the study stitches
    patches for this view, so a network arm's object is scored as the study scores it.
    """

    device: str = "auto"
    seed: int = 0
    solver_seed: int = 0
    gridsize: int = 1
    neighbor_count: int = 4
    crop_size_M: int | None = None
    stitch_weighting: str = "flat"
    phase_sync: int = 0
    num_threads: int | None = None
    data_source: str = "dataset"

    def key(self) -> dict[str, Any]:
        """The part that determines an arm's output (device and threads do not, on CPU)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads"):
            d.pop(k)
        return d


@dataclasses.dataclass(frozen=True)
class Snapshots:
    """A request for convergence snapshots: call ``record(epoch, seconds, object)`` at each of
    ``epochs`` (the arm's own iteration count; seconds from the arm's start)."""

    epochs: tuple[int, ...]
    record: Callable[[int, float, Any], None]


def slug_of(name: str) -> str:
    """A directory name for an arm: ``PtyChi-ePIE`` → ``ptychi_epie``."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
    return s or "arm"


class Arm:
    """One reconstruction method, configured (see the module docstring).

    Subclasses set the class attributes and implement :meth:`reconstruct` (and :meth:`fit`
    when ``needs.train``). ``name`` is the instance's name in the design (a type may be
    instanced several times: ``[arms."PtyChi-ePIE"] type = "PtyChi"``).
    """

    #: The registered type name (what ``type = ...`` in an ``[arms.<Name>]`` table selects).
    type_name: ClassVar[str] = ""
    Settings: ClassVar[type[ArmSettings]] = ArmSettings
    role: ClassVar[Role] = "method"
    needs: ClassVar[Needs] = Needs()
    #: Reconstructs the two interleaved half-scans too (the half-scan FRC, reference-free).
    halves: ClassVar[bool] = True
    #: Can record convergence snapshots (:class:`Snapshots`).
    snapshots: ClassVar[bool] = False
    #: One line for the report's arm table.
    summary: ClassVar[str] = ""
    #: Cheap enough to be reconstructed inside compare (no job of its own: the floor).
    inline: ClassVar[bool] = False
    #: The :class:`ArmContext` fields each step reads (``{"fit": (...), "reconstruct": (...)}``;
    #: None: all of them). Only those go into its jobs' keys, so a setting of the study it does
    #: not read (say the networks' stitching, for a solver) never re-runs it.
    context_fields: ClassVar[dict[str, tuple[str, ...]] | None] = None
    #: Matplotlib colour (None: the report assigns one).
    color: ClassVar[str | None] = None
    #: Import names of the optional libraries it runs on; a design naming the arm without them
    #: is refused when it is read (one line saying what to install), before any job runs.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, settings: ArmSettings | None = None):
        self.name = name
        self.settings = settings if settings is not None else self.Settings()
        self._slug: str | None = None  # the registry keeps the built-ins' directory names
        self._root: str | None = None
        self._prefix: str | None = None

    # ------------------------------------------------------------------ what the study asks

    @property
    def slug(self) -> str:
        """Directory name of this arm's artifacts and reconstructions."""
        return self._slug or slug_of(self.name)

    @property
    def start(self) -> str | None:
        """Name of the arm whose reconstruction this one starts from (None: its own start)."""
        return getattr(self.settings, "start", None)

    @property
    def fit_from(self) -> str | None:
        """Name of the arm whose fit artifact this one uses instead of fitting (None: its own)."""
        return None

    @property
    def test_only(self) -> bool:
        """Runs on the test split only: an arm started from another arm's test reconstruction,
        or one whose settings say ``test_only = true`` (the verdicts are the test split's)."""
        return self.start is not None or bool(getattr(self.settings, "test_only", False))

    def wants_halves(self) -> bool:
        """Whether the study also runs it on the two interleaved half-scans (a ``halves``
        setting, where the arm's settings have one, else the class's ``halves``)."""
        return bool(getattr(self.settings, "halves", type(self).halves))

    @property
    def timeout_s(self) -> float | None:
        return getattr(self.settings, "timeout_s", None)

    @property
    def fits(self) -> bool:
        return self.needs.train

    def key(self) -> dict[str, Any]:
        """What determines this arm's outputs beside its data (goes into its jobs' keys)."""
        return {"type": self.type_name, "settings": self.settings.model_dump(mode="json")}

    def context_key(self, ctx: ArmContext, step: str) -> dict[str, Any]:
        """The part of ``ctx`` that determines this arm's ``step`` (``fit``/``reconstruct``)."""
        key = ctx.key()
        fields = (self.context_fields or {}).get(step) if self.context_fields else None
        return key if fields is None else {k: key[k] for k in fields}

    def solver(self) -> str | None:
        """The solver library this arm runs from its own flat start (``"pty-chi"``,
        ``"CDTools"``, ...; None: not an iterative solver, or one started from another arm).
        The report's agreement table sets the arms of different libraries side by side."""
        return None

    def iterations(self) -> int | None:
        """The arm's iteration count, where snapshots are taken (None: it has no epochs).

        Reads ``settings.epochs``; an arm that counts otherwise (and sets ``snapshots``)
        overrides this."""
        return getattr(self.settings, "epochs", None)

    def recon_dir(self, dd: str, view: str, split: str) -> str:
        """Run-relative directory of its reconstruction of one view and split."""
        if self._root:
            return f"{self._root}/{dd}/{view}/{split}"
        return f"arms/{self.slug}/{dd}/{view}/{split}"

    def artifact_dir(self, dd: str, view: str) -> str:
        """Run-relative directory of its fit artifact for one view."""
        return f"models/{dd}/{view}/{self.slug}"

    # ------------------------------------------------------------------ what the arm does

    def fit(
        self, train: PtychoDataset, artifact: Path, ctx: ArmContext, *, resume: bool = False
    ) -> None:
        """Fit on the training view, writing everything :meth:`reconstruct` needs into
        ``artifact`` (a directory). ``resume``: a staged partial artifact from an interrupted
        fit with the same key is there; continue it."""
        raise NotImplementedError(f"{self.name}: this arm has no fit step")

    def reconstruct(
        self,
        ds: PtychoDataset,
        ctx: ArmContext,
        *,
        artifact: Path | None = None,
        start: Reconstruction | None = None,
        snapshots: Snapshots | None = None,
    ) -> Reconstruction:
        """Reconstruct ``ds`` (diffraction amplitudes, positions, the probe) in its object frame.

        ``artifact``: the fit's directory (arms that fit). ``start``: the reconstruction of
        the arm named by :attr:`start`. Returns a :class:`Reconstruction` whose metadata has
        ``arm`` (= ``self.name``), ``seconds`` and, where they apply, ``train_s`` / ``infer_s``
        / ``refine_s``.
        """
        raise NotImplementedError
