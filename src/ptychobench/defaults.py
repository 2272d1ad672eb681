"""Defaults shared by the CLI, the study and the library (no heavy imports: the CLI reads them
before it imports torch)."""

#: Phase-synchronisation iterations of network patches before stitching that the study and the
#: CLI use unless told otherwise (0 = off, the ablation); every preset measured better with it
#: (see the presets' [metrics] comments).
DEFAULT_PHASE_SYNC = 20
