"""The ``ptychobench`` command line: a thin typer layer over the Python API (SPEC §9).

Errors print one line on stderr (what, where, expected vs found) and exit with status 2; ``--debug``
shows the traceback instead. Outputs are written atomically, so a failed command leaves no file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ptychobench.defaults import DEFAULT_PHASE_SYNC

app = typer.Typer(
    name="ptychobench",
    help="Which ptychographic reconstruction method works best at which dose and overlap.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE: dict[str, Any] = {"debug": False}
log = logging.getLogger("ptychobench")


class CLIError(Exception):
    """An error to report on one line."""


def _check_weighting(option: str, value: str) -> str:
    """``value`` if it is a known stitch / merge weighting, else a CLIError naming ``option``."""
    from ptychobench.stitch import STITCH_WEIGHTINGS

    if value not in STITCH_WEIGHTINGS:
        raise CLIError(f"{option}: expected 'flat' or 'probe', found {value!r}")
    return value


def _check_phase_sync(value: int) -> int:
    """``value`` if it is a usable number of phase-sync iterations, else a CLIError."""
    if value < 0:
        raise CLIError(f"--phase-sync: expected iterations >= 0 (0 = off), found {value}")
    return value


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    _STATE["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            found = err.get("input")
            found_s = "" if isinstance(found, dict) else f" (found {found!r})"
            parts.append(f"{loc}: {err['msg']}{found_s}")
        return "invalid settings: " + "; ".join(parts)
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}"
    msg = str(exc).strip().replace("\n", " ")
    return msg or type(exc).__name__


def _run(fn, *args, **kwargs):
    """Call ``fn``; turn expected failures into one line on stderr and exit code 2."""
    from ptychobench.study.stop import Stopped

    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except Stopped as exc:  # SIGTERM / SIGINT: the run has cleaned up; say how to go on
        typer.echo(f"error: {getattr(exc, 'detail', exc)}", err=True)
        raise typer.Exit(code=exc.exit_code) from None
    except (ValueError, OSError, KeyError, CLIError) as exc:
        if _STATE["debug"]:
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(code=2) from None


# --------------------------------------------------------------------------------------- simulate
@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Output dataset (.npz or .cxi).")],
    n: Annotated[int, typer.Option("--n", help="Diffraction pattern side N (px).")] = 64,
    object: Annotated[
        str,
        typer.Option(
            "--object", help="lines | lines:coupled | grf | image:A+B | FILE (.npz/.cxi)."
        ),
    ] = "image:camera+astronaut",
    object_size: Annotated[int, typer.Option("--object-size", help="Object side (px).")] = 256,
    a_min: Annotated[float, typer.Option("--a-min", help="Minimum object amplitude.")] = 0.5,
    phi_max: Annotated[float, typer.Option("--phi-max", help="Phase range ±phi_max (rad).")] = (
        1.5707963267948966
    ),
    probe: Annotated[
        str, typer.Option("--probe", help="fly64 | gaussian | disk | kb | FILE.")
    ] = "fly64",
    scan: Annotated[str, typer.Option("--scan", help="random | raster | fermat.")] = "raster",
    step_px: Annotated[
        float | None, typer.Option("--step-px", help="Scan step (px); excludes --overlap.")
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            "--overlap", help="Target linear overlap with the probe diameter [default 0.7]."
        ),
    ] = None,
    n_positions: Annotated[
        int | None, typer.Option("--n-positions", help="Number of scan positions.")
    ] = None,
    jitter_px: Annotated[float, typer.Option("--jitter-px", help="Raster jitter (± px).")] = 0.0,
    dose: Annotated[float, typer.Option("--dose", help="Photons per pattern (mean).")] = 1e4,
    noiseless: Annotated[bool, typer.Option("--noiseless", help="No Poisson noise.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of object and scan.")] = 0,
    noise_seed: Annotated[
        int | None, typer.Option("--noise-seed", help="Seed of the Poisson draw [default seed+1].")
    ] = None,
    energy_ev: Annotated[
        float | None,
        typer.Option("--energy-ev", help="Photon energy (eV) [default 8800]: sets the pixel."),
    ] = None,
    detector_distance_m: Annotated[
        float | None,
        typer.Option("--detector-distance-m", help="Sample-detector distance (m) [default 2.0]."),
    ] = None,
    detector_pixel_m: Annotated[
        float | None,
        typer.Option("--detector-pixel-m", help="Detector pixel pitch (m) [default 75e-6]."),
    ] = None,
) -> None:
    """Simulate a dataset with ground truth (objectGuess and Y).

    Example: ptychobench simulate --out d.npz --object image:camera+moon --probe fly64 --dose 1000
    """

    def go():
        from ptychobench.data.io import save
        from ptychobench.simulate import SimulationConfig
        from ptychobench.simulate import simulate as run_simulation

        cfg = SimulationConfig(
            N=n,
            object=object,
            object_size=object_size,
            a_min=a_min,
            phi_max=phi_max,
            probe=probe,
            scan=scan,
            step_px=step_px,
            overlap=overlap,
            n_positions=n_positions,
            jitter_px=jitter_px,
            dose=dose,
            noise="none" if noiseless else "poisson",
            seed=seed,
            noise_seed=noise_seed,
            **{
                k: v
                for k, v in (
                    ("energy_ev", energy_ev),
                    ("detector_distance_m", detector_distance_m),
                    ("detector_pixel_m", detector_pixel_m),
                )
                if v is not None
            },
        )
        _check_writable_suffix(out)
        ds = run_simulation(cfg)
        save(ds, out)
        m = ds.metadata
        typer.echo(
            f"wrote {out}: {ds.n} patterns, N={ds.N}, dose {m['dose']:g}, "
            f"realised {m['realised_mean_photons']:.1f} photons/pattern, "
            f"object pixel {cfg.geometry.object_pixel_m * 1e9:.1f} nm"
        )

    _run(go)


def _publish_together(*writes) -> None:
    """Run ``(write, path)`` pairs in order; if one fails, remove the outputs already written.

    Each write is atomic on its own; this makes a command's set of outputs all-or-nothing.
    """
    done: list[Path] = []
    try:
        for write, path in writes:
            write(path)
            done.append(path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def _check_writable_suffix(path: Path) -> None:
    if path.suffix.lower() not in (".npz", ".cxi"):
        raise CLIError(
            f"{path}: expected an output file ending in .npz or .cxi, found "
            f"{path.suffix or 'no extension'!r}"
        )
    if path.exists() and path.is_dir():
        raise CLIError(f"{path}: expected a file path, found a directory")


ProbeOption = Annotated[
    Path | None,
    typer.Option(
        "--probe",
        help="Probe to use instead of the data's own (NPZ, CXI or Ptychodus product); "
        "required when the data carry none.",
    ),
]


def _load_dataset(path: Path, probe: Path | None = None, *, counts: bool = False, need_probe=False):
    """Load a dataset; ``probe`` replaces (or supplies) its probe; ``need_probe``: one line
    saying ``--probe FILE`` is needed when there is none."""
    from ptychobench.data.dataset import require_probe, with_probe
    from ptychobench.data.io import load, load_probe

    ds = load(path, counts=counts)
    if probe is not None:
        ds = with_probe(ds, load_probe(probe), str(probe))
    if need_probe:
        require_probe(ds, str(path))
    return ds


# ---------------------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Dataset (.npz or .cxi).")],
    probe: ProbeOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="Write a summary figure.")] = None,
    counts: Annotated[
        bool, typer.Option("--counts", help="Diffraction holds counts: take sqrt on load.")
    ] = False,
) -> None:
    """Validate a dataset and summarise it (n, N, dose, photons, coords, overlap metrics).

    Example: ptychobench inspect d.npz --json --png d.png
    """

    def go():
        from ptychobench.inspect import summarize, write_figure

        ds = _load_dataset(path, probe, counts=counts)
        summary = summarize(ds)
        summary["file"] = str(path)
        if png is not None:
            write_figure(ds, png)
            summary["png"] = str(png)
        if json_out:
            typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        else:
            width = max(len(k) for k in summary)
            for key, value in summary.items():
                typer.echo(f"{key:>{width}}: {value}")

    _run(go)


# ------------------------------------------------------------------------------------------ split
@app.command()
def split(
    path: Annotated[Path, typer.Argument(help="Dataset to split.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for the two halves.")],
    axis: Annotated[str, typer.Option("--axis", help="Coordinate to split along (x or y).")] = "y",
    fraction: Annotated[
        float, typer.Option("--fraction", help="Split point as a fraction of the range.")
    ] = 0.5,
) -> None:
    """Spatial train/test split: train below the split point, test at or above.

    Example: ptychobench split d.npz --out-dir splits --axis y --fraction 0.5
    """

    def go():
        from ptychobench.data.io import load, save
        from ptychobench.data.split import split as run_split

        ds = load(path)
        train, test = run_split(ds, axis=axis, fraction=fraction)
        suffix = path.suffix if path.suffix in (".npz", ".cxi") else ".npz"
        out_dir.mkdir(parents=True, exist_ok=True)
        out_train = out_dir / f"{path.stem}_train{suffix}"
        out_test = out_dir / f"{path.stem}_test{suffix}"
        _publish_together(
            (lambda p: save(train, p), out_train), (lambda p: save(test, p), out_test)
        )
        typer.echo(f"wrote {out_train} ({train.n} patterns) and {out_test} ({test.n} patterns)")

    _run(go)


# ------------------------------------------------------------------------------------------- view
@app.command()
def view(
    path: Annotated[Path, typer.Argument(help="Dataset (usually one split).")],
    out: Annotated[Path, typer.Option("--out", help="Output view dataset (.npz).")],
    gridsize: Annotated[
        int, typer.Option("--gridsize", help="1 (single patterns) or 2 (groups of 4).")
    ],
    s_img: Annotated[
        float, typer.Option("--s-img", help="Fraction of positions kept (0, 1].")
    ] = 1.0,
    n_groups: Annotated[
        int | None, typer.Option("--n-groups", help="Number of groups [default: one per position].")
    ] = None,
    neighbor_count: Annotated[
        int,
        typer.Option("--neighbor-count", help="K nearest neighbours to draw group members from."),
    ] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of subsampling and grouping.")] = 0,
) -> None:
    """Subsample, group and measure overlap; writes OUT and OUT.overlap.json.

    Example: ptychobench view d_train.npz --out dense.npz --gridsize 2 --neighbor-count 7
    """

    def go():
        from ptychobench.data.grouping import make_view
        from ptychobench.data.io import load, save
        from ptychobench.data.overlap import overlap_report, write_overlap_json
        from ptychobench.physics.probes import probe_info

        _check_writable_suffix(out)
        ds = load(path)
        v = make_view(
            ds,
            gridsize=gridsize,
            s_img=s_img,
            n_groups=n_groups,
            neighbor_count=neighbor_count,
            seed=seed,
        )
        if v.probeGuess is None:
            # the overlap metrics need the probe's diameter; the view itself does not
            report = {"overlap": "not computed: no probe in the data", "n_positions": v.n}
        else:
            D = probe_info(v.probeGuess).effective_diameter_px
            report = overlap_report(v, D, neighbor_count=neighbor_count)
        overlap_path = out.with_name(out.name + ".overlap.json")
        _publish_together(
            (lambda p: save(v, p), out), (lambda p: write_overlap_json(report, p), overlap_path)
        )
        typer.echo(f"wrote {out} ({v.n} patterns, {len(v.groups)} groups) and {overlap_path}")

    _run(go)


# ------------------------------------------------------------------------------------ reconstruct
@app.command()
def reconstruct(
    data: Annotated[Path, typer.Argument(help="Dataset (.npz or .cxi).")],
    out: Annotated[Path, typer.Option("--out", help="Output reconstruction (.npz).")],
    probe: ProbeOption = None,
    engine: Annotated[
        str, typer.Option("--engine", help="lsqml | epie | rpie | pie | dm | raar.")
    ] = "lsqml",
    epochs: Annotated[int, typer.Option("--epochs", help="Iterations over all patterns.")] = 100,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Patterns per update [default 100; ePIE 10].")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    noise_model: Annotated[
        str, typer.Option("--noise-model", help="LSQML noise model: gaussian | poisson.")
    ] = "gaussian",
    refine_probe: Annotated[
        bool, typer.Option("--refine-probe", help="Refine the probe (default: known, fixed).")
    ] = False,
    init_from_truth: Annotated[
        bool,
        typer.Option("--init-from-truth", help="DIAGNOSTIC ONLY: start from objectGuess (unfair)."),
    ] = False,
    init_object: Annotated[
        Path | None,
        typer.Option(
            "--init-object",
            help="Start from this reconstruction NPZ (any arm's, in DATA's object frame); "
            "pixels it did not cover start at 1.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="pty-chi random seed.")] = 0,
) -> None:
    """Reconstruct with pty-chi (object = ones, known probe and positions, all patterns).

    Example: ptychobench reconstruct d.npz --out recon.npz --engine lsqml --epochs 100

    Hybrid (PtychoPINN+LSQML): ptychobench reconstruct d.npz --init-object pinn.npz --epochs 25
    """

    def go():
        from ptychobench.data.recon import write_reconstruction
        from ptychobench.iterative import IterativeConfig
        from ptychobench.iterative import reconstruct as run_reconstruct

        if out.suffix.lower() != ".npz":
            raise CLIError(f"{out}: expected an output file ending in .npz, found {out.suffix!r}")
        cfg = IterativeConfig(
            engine=engine,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            noise_model=noise_model,
            refine_probe=refine_probe,
            init_from_truth=init_from_truth,
            seed=seed,
            progress=sys.stderr.isatty(),
        )
        ds = _load_dataset(data, probe, need_probe=True)
        start = None
        if init_object is not None:
            from ptychobench.data.recon import read_reconstruction

            start = read_reconstruction(init_object)
            start.metadata["source"] = f"--init-object {init_object}"
        rec = run_reconstruct(ds, cfg, init_object=start)
        write_reconstruction(rec, out)
        typer.echo(
            f"wrote {out}: {cfg.engine} {cfg.epochs} epochs on {ds.n} patterns in "
            f"{rec.metadata['seconds']:.1f} s, start: {rec.metadata['init']}"
        )

    _run(go)


# ------------------------------------------------------------------------------------------ train
@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training dataset or view (.npz/.cxi).")],
    model: Annotated[str, typer.Option("--model", help="pinn | baseline.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory.")],
    probe: ProbeOption = None,
    gridsize: Annotated[int, typer.Option("--gridsize", help="PINN group size: 1 or 2.")] = 1,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs.")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Groups per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of init, split and data order.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint.")] = False,
    n_filters_scale: Annotated[
        float, typer.Option("--n-filters-scale", help="Width factor s (filters 32s/64s/128s).")
    ] = 1.0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Held-out fraction of groups.")
    ] = 0.05,
    loss: Annotated[str, typer.Option("--loss", help="PINN loss: poisson | mae.")] = "poisson",
    neighbor_count: Annotated[
        int, typer.Option("--neighbor-count", help="K for gs2 groups when DATA has none.")
    ] = 4,
    merge_weighting: Annotated[
        str,
        typer.Option(
            "--merge-weighting",
            help="PINN gs2 merge weight: flat (decoder window) | probe (window · |P|²).",
        ),
    ] = "flat",
    patience: Annotated[
        int,
        typer.Option(
            "--patience", help="Stop after this many epochs without improvement (0: never)."
        ),
    ] = 10,
    min_epochs: Annotated[
        int, typer.Option("--min-epochs", help="Never stop on a plateau before this epoch.")
    ] = 0,
    min_delta: Annotated[
        float,
        typer.Option("--min-delta", help="Relative loss decrease that counts as improvement."),
    ] = 0.0,
) -> None:
    """Train PtychoPINN (unsupervised, Poisson NLL) or the supervised Baseline; writes a bundle.

    Training stops on a validation plateau (--patience epochs without a relative improvement of
    --min-delta, never before --min-epochs) or after --epochs; the bundle records why.

    Example: ptychobench train train.npz --model pinn --gridsize 2 --out models/pinn --epochs 30
    """

    def go():
        from ptychobench.fit import fit
        from ptychobench.train import TrainConfig

        if model not in ("pinn", "baseline"):
            raise CLIError(f"--model: expected 'pinn' or 'baseline', found {model!r}")
        if gridsize not in (1, 2):
            raise CLIError(f"--gridsize: expected 1 or 2, found {gridsize}")
        _check_weighting("--merge-weighting", merge_weighting)
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            val_fraction=val_fraction,
            early_stopping_patience=patience,
            min_epochs=min_epochs,
            min_delta=min_delta,
        )
        ds = _load_dataset(data, probe, need_probe=model == "pinn")
        result = fit(
            ds,
            model,
            out,
            gridsize=gridsize,
            train_config=cfg,
            n_filters_scale=n_filters_scale,
            loss=loss,
            neighbor_count=neighbor_count,
            resume=resume,
            data_source=str(data),
            merge_weighting=merge_weighting,
        )
        if result.interrupted:
            typer.echo(f"interrupted: checkpoint and bundle of the last epoch in {out}", err=True)
            raise typer.Exit(code=130)
        last = result.history[-1] if result.history else {}
        typer.echo(
            f"wrote {out}: {result.epochs_run} epochs ({result.stop_reason}), train loss "
            f"{last.get('train_loss', 0):.4g}, {result.patterns_per_s:.0f} patterns/s"
        )

    _run(go)


# ------------------------------------------------------------------------------------------ infer
@app.command()
def infer(
    bundle: Annotated[Path, typer.Argument(help="Model bundle directory.")],
    data: Annotated[Path, typer.Argument(help="Dataset to reconstruct.")],
    out: Annotated[Path, typer.Option("--out", help="Reconstruction NPZ.")],
    probe: ProbeOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Groups per chunk.")] = 256,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    stitch_crop_size: Annotated[
        int | None, typer.Option("--stitch-crop-size", help="Flat stitch crop M [default N/4].")
    ] = None,
    stitch_weighting: Annotated[
        str,
        typer.Option(
            "--stitch-weighting",
            help="flat (central M×M crop, weight 1) | probe (|P|² on the N/2 window, M ignored).",
        ),
    ] = "flat",
    phase_sync: Annotated[
        int,
        typer.Option(
            "--phase-sync",
            help="Iterations of phase synchronisation of the patches before stitching, as the "
            "study does (0 = off: the ablation).",
        ),
    ] = DEFAULT_PHASE_SYNC,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast/--plain",
            help="Optimised path (CPU: channels-last convolutions) or the plain eager one.",
        ),
    ] = True,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="Run the network through torch.compile (eager fallback with a warning).",
        ),
    ] = False,
    amp: Annotated[
        bool,
        typer.Option("--amp/--fp32", help="bf16 autocast of the network (stitching stays fp32)."),
    ] = False,
) -> None:
    """Streaming inference and stitching into the object's pixel frame.

    Example: ptychobench infer models/pinn test.npz --out pinn_test.npz
    """

    def go():
        from ptychobench.data.recon import write_reconstruction
        from ptychobench.infer import infer as run_infer
        from ptychobench.models.bundle import load_bundle

        if out.suffix.lower() != ".npz":
            raise CLIError(f"{out}: expected an output file ending in .npz, found {out.suffix!r}")
        _check_weighting("--stitch-weighting", stitch_weighting)
        _check_phase_sync(phase_sync)
        net, config = load_bundle(bundle)
        ds = _load_dataset(data, probe)
        rec = run_infer(
            net,
            ds,
            train_stats=config.get("data"),
            batch_size=batch_size,
            device=device,
            crop_size_M=stitch_crop_size,
            data_source=str(data),
            stitch_weighting=stitch_weighting,
            phase_sync=phase_sync,
            fast=fast,
            compile=compile,
            amp=amp,
        )
        rec.metadata["bundle"] = str(bundle)
        write_reconstruction(rec, out)
        typer.echo(
            f"wrote {out}: {rec.metadata['n_patterns']} patterns in {rec.metadata['seconds']:.2f} s"
        )

    _run(go)


# ----------------------------------------------------------------------------------------- refine
@app.command()
def refine(
    bundle: Annotated[Path, typer.Argument(help="Trained PtychoPINN bundle directory.")],
    data: Annotated[Path, typer.Argument(help="Dataset to reconstruct (its diffraction only).")],
    out: Annotated[Path, typer.Option("--out", help="Reconstruction NPZ (PtychoPINN+TTR).")],
    probe: ProbeOption = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the patterns.")] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Adam step of the network's weights.")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patterns per step.")] = 32,
    max_seconds: Annotated[
        float | None, typer.Option("--max-seconds", help="Stop after this many seconds.")
    ] = None,
    phase_sync: Annotated[
        int, typer.Option("--phase-sync", help="Synchronisation iterations for the offsets.")
    ] = DEFAULT_PHASE_SYNC,
    seed: Annotated[int, typer.Option("--seed", help="Batch order.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Test-time refinement: fine-tune a PINN on DATA's diffraction through one global object.

    Unsupervised (never reads objectGuess or Y); the bundle on disk is not changed.

    Example: ptychobench refine models/pinn test.npz --out ttr.npz --epochs 5
    """

    def go():
        from ptychobench.data.recon import write_reconstruction
        from ptychobench.models.bundle import load_bundle
        from ptychobench.refine import TTRConfig
        from ptychobench.refine import refine as run_refine

        if out.suffix.lower() != ".npz":
            raise CLIError(f"{out}: expected an output file ending in .npz, found {out.suffix!r}")
        _check_phase_sync(phase_sync)
        cfg = TTRConfig(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_seconds=max_seconds,
            phase_sync=phase_sync,
            seed=seed,
            device=device,
        )
        net, _ = load_bundle(bundle)
        ds = _load_dataset(data, probe, need_probe=True)
        res = run_refine(net, ds, cfg)
        res.reconstruction.metadata["bundle"] = str(bundle)
        write_reconstruction(res.reconstruction, out)
        m = res.reconstruction.metadata
        typer.echo(
            f"wrote {out}: {res.epochs_run} epochs ({res.stop_reason}) in {res.seconds:.1f} s, "
            f"scan loss {m['loss_start']:.4g} -> {m['loss_end']:.4g}"
        )

    _run(go)


# ---------------------------------------------------------------------------------------- compare
@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Dataset with objectGuess (the truth).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for the comparison.")],
    probe: ProbeOption = None,
    iterative: Annotated[
        Path | None, typer.Option("--iterative", help="PtyChi reconstruction NPZ.")
    ] = None,
    pinn: Annotated[Path | None, typer.Option("--pinn", help="PtychoPINN reconstruction.")] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Baseline reconstruction.")
    ] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help="Extra arm as NAME=PATH (repeatable): a reconstruction NPZ, a model bundle or "
            "a Ptychodus product (.h5/.npz).",
        ),
    ] = None,
    registration: Annotated[
        str, typer.Option("--registration", help="all | none (same for every arm).")
    ] = "all",
    phase_align: Annotated[
        str, typer.Option("--phase-align", help="plane | mean | none.")
    ] = "plane",
    stitch_crop_size: Annotated[
        int | None, typer.Option("--stitch-crop-size", help="Stitch crop M [default N/4, even].")
    ] = None,
    stitch_weighting: Annotated[
        str,
        typer.Option(
            "--stitch-weighting",
            help="How bundle arms are stitched: flat (M×M crop) | probe (|P|² on the N/2 window).",
        ),
    ] = "flat",
    phase_sync: Annotated[
        int,
        typer.Option(
            "--phase-sync",
            help="Iterations of phase synchronisation of the patches before stitching, as the "
            "study does (0 = off: the ablation).",
        ),
    ] = DEFAULT_PHASE_SYNC,
    ms_ssim_sigma: Annotated[
        float, typer.Option("--ms-ssim-sigma", help="Amplitude smoothing before MS-SSIM (px).")
    ] = 1.0,
    no_floor: Annotated[
        bool, typer.Option("--no-floor", help="Skip the Flat (constant object) floor arm.")
    ] = False,
    baseline_debug_limit: Annotated[
        int | None,
        typer.Option("--baseline-debug-limit", help="Baseline on the first K patterns only."),
    ] = None,
    baseline_debug_dir: Annotated[
        Path | None,
        typer.Option("--baseline-debug-dir", help="Write baseline_debug.npz and stats here."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="Inference device for bundles.")] = "auto",
) -> None:
    """Align every arm identically to the truth, score it, write the comparison bundle.

    An arm is a reconstruction NPZ or a model bundle directory (inference runs on DATA).

    Example: ptychobench compare d.npz --out-dir cmp --iterative recon.npz
    """

    def go():
        from ptychobench.data.product import is_product, product_to_reconstruction, read_product
        from ptychobench.data.recon import read_reconstruction
        from ptychobench.evaluate.compare import CompareSettings
        from ptychobench.evaluate.compare import compare as run_compare

        _check_weighting("--stitch-weighting", stitch_weighting)
        _check_phase_sync(phase_sync)
        settings = CompareSettings(
            crop_size_M=stitch_crop_size,
            stitch_weighting=stitch_weighting,
            phase_sync=phase_sync,
            registration=registration,
            phase_align=phase_align,
            ms_ssim_sigma=ms_ssim_sigma,
            floor=not no_floor,
        )
        ds = _load_dataset(data, probe)
        settings.validate(ds.N)
        paths: dict[str, Path] = {}
        for name, path in (("PtyChi", iterative), ("PtychoPINN", pinn), ("Baseline", baseline)):
            if path is not None:
                paths[name] = path
        for spec in arm or []:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise CLIError(f"--arm: expected NAME=PATH, found {spec!r}")
            paths[name] = Path(path)
        if not paths and settings.floor is False:
            raise CLIError(
                "compare: expected at least one arm (--iterative/--pinn/--baseline/--arm)"
            )
        shape = None if ds.objectGuess is None else ds.objectGuess.shape
        if baseline_debug_limit is not None and baseline_debug_limit < 1:
            raise CLIError(f"--baseline-debug-limit: expected >= 1, found {baseline_debug_limit}")
        arms: dict = {}
        region = None
        for name, path in paths.items():
            if path.is_dir():
                arms[name], used = _bundle_arm(
                    name, path, ds, data, settings, device, baseline_debug_limit, baseline_debug_dir
                )
                if used is not None:
                    region = used
            elif is_product(path):
                arms[name] = product_to_reconstruction(read_product(path), ds)
            else:
                arms[name] = read_reconstruction(path, shape)
        result = run_compare(
            ds, arms, out_dir, settings, data_source=str(data), region_coords=region
        )
        from ptychobench.evaluate.compare import frc_period_m

        pixel_m = result.settings.get("object_pixel_size_m")
        for name, m in result.metrics.items():
            period = frc_period_m(m["frc50"][1], pixel_m)
            nm = f" ({period * 1e9:.0f} nm)" if period is not None else ""
            typer.echo(
                f"{name:>11}: phase ssim {m['ssim'][1]:.3f}  amplitude ssim {m['ssim'][0]:.3f}  "
                f"nrmse {m['nrmse']:.3f}  phase frc50 {m['frc50'][1]:.3f} cycles/px{nm}"
            )
        if result.errors:
            for name, err in result.errors.items():
                typer.echo(f"error: arm {name}: {err}", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"wrote {out_dir}")

    _run(go)


def _bundle_arm(name, path, ds, data, settings, device, debug_limit, debug_dir):
    """Run a bundle on DATA for compare; (Reconstruction | InferenceError, region coords | None)."""
    from ptychobench.infer import InferenceError, dataset_groups
    from ptychobench.infer import infer as run_infer
    from ptychobench.models.bundle import load_bundle

    net, config = load_bundle(path)
    is_baseline = net.kind == "baseline"
    limit = debug_limit if is_baseline else None
    try:
        rec = run_infer(
            net,
            ds,
            train_stats=config.get("data"),
            device=device,
            crop_size_M=settings.validate(ds.N),
            stitch_weighting=settings.stitch_weighting,
            phase_sync=settings.phase_sync,
            data_source=str(data),
            arm=name,
            debug_limit=limit,
            debug_dir=debug_dir if is_baseline else None,
        )
    except InferenceError as exc:
        return exc, None
    region = None
    if limit is not None:
        members = dataset_groups(ds, 1).reshape(-1)[:limit]
        region = ds.coords[members]
    return rec, region


# ---------------------------------------------------------------------------------------- convert
@app.command()
def convert(
    src: Annotated[
        Path,
        typer.Argument(help="Input: dataset (.npz/.cxi), reconstruction NPZ or Ptychodus product."),
    ],
    dst: Annotated[
        Path,
        typer.Argument(help="Output: .npz / .cxi dataset, or .h5/.hdf5 Ptychodus product."),
    ],
    probe: ProbeOption = None,
    counts: Annotated[
        bool, typer.Option("--counts", help="Input diffraction holds counts: take sqrt.")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The dataset a reconstruction or product belongs to (its positions, probe, "
            "frame and geometry).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Force the output kind: dataset | product (for a .npz DST)."),
    ] = None,
) -> None:
    """Convert datasets between NPZ and CXI, and to / from Ptychodus product files.

    A dataset becomes a product of its truth (``objectGuess``); a reconstruction NPZ becomes a
    product with --data (its positions and probe); a product becomes a reconstruction NPZ in
    the --data dataset's object frame.

    Example: ptychobench convert d.npz d.cxi

    Also: ptychobench convert recon.npz recon.h5 --data d.npz ;
    ptychobench convert their_product.h5 recon.npz --data d.npz
    """

    def go():
        from ptychobench.data import product as prod
        from ptychobench.data.io import add_parent, save
        from ptychobench.data.recon import read_reconstruction, write_reconstruction

        if to not in (None, "dataset", "product"):
            raise CLIError(f"--to: expected 'dataset' or 'product', found {to!r}")
        if not src.exists():
            raise CLIError(f"file not found: {src}")
        to_product = to == "product" or dst.suffix.lower() in (".h5", ".hdf5")
        src_is_product = prod.is_product(src)
        src_is_recon = not src_is_product and _is_reconstruction(src)
        if src_is_product or src_is_recon:
            if data is None:
                kind = "a Ptychodus product" if src_is_product else "a reconstruction"
                raise CLIError(
                    f"{src}: {kind} needs --data DATASET (its positions, frame and geometry)"
                )
            ds = _load_dataset(data, probe)
            if src_is_product and not to_product:
                if dst.suffix.lower() != ".npz":
                    raise CLIError(f"{dst}: expected a reconstruction .npz, found {dst.suffix!r}")
                rec = prod.product_to_reconstruction(prod.read_product(src), ds)
                write_reconstruction(rec, dst)
                typer.echo(f"wrote {dst} (reconstruction in {data}'s frame)")
                return
            if src_is_product:
                raise CLIError(f"{src}: already a Ptychodus product")
            if not to_product:
                raise CLIError(
                    f"{dst}: a reconstruction converts to a product (.h5/.hdf5, or --to product)"
                )
            product = prod.reconstruction_to_product(
                read_reconstruction(src, ds.frame_shape), ds
            )
            prod.write_product(product, dst)
            typer.echo(f"wrote {dst} (Ptychodus product, {product.n} positions)")
            return
        ds = _load_dataset(src, probe, counts=counts)
        if to_product:
            product = prod.dataset_to_product(ds)
            prod.write_product(product, dst)
            what = "the truth object" if ds.objectGuess is not None else "a unit object"
            typer.echo(f"wrote {dst} (Ptychodus product of {what}, {product.n} positions)")
            return
        _check_writable_suffix(dst)
        add_parent(ds.metadata, src)
        ds.metadata.setdefault("transformations", []).append(
            {"op": "convert", "from": src.suffix.lstrip("."), "to": dst.suffix.lstrip(".")}
        )
        save(ds, dst)
        typer.echo(f"wrote {dst} ({ds.n} patterns)")

    _run(go)


def _is_reconstruction(path: Path) -> bool:
    """True for a reconstruction NPZ (it has ``reconstructed_object``), not a dataset."""
    import zipfile

    if path.suffix.lower() != ".npz":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return "reconstructed_object.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


# ------------------------------------------------------------------------------------------ study
study_app = typer.Typer(
    help="The dose × overlap study: run (resumable DAG), report, verify.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    config: Annotated[
        Path | None, typer.Argument(help="Study design TOML (default: the --preset).")
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", help="Shipped design when no CONFIG: quick | laptop | fly64.")
    ] = "quick",
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: runs/<design name>).")
    ] = None,
    executor: Annotated[str, typer.Option("--executor", help="local | dask.")] = "local",
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Address of a running dask scheduler.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Start a local dask cluster of N workers."),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only", help="Subset, e.g. dose=1000,view=dense,split=test (+ what it needs)."
        ),
    ] = None,
    clobber: Annotated[
        bool,
        typer.Option("--clobber", help="Archive (never delete) the run directory's old outputs."),
    ] = False,
    post_verify_only: Annotated[
        bool, typer.Option("--post-verify-only", help="Only re-run the verification of --out.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar (default on a TTY; else a line every 30 s); --no-progress: "
            "failures only.",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats",
            min=1,
            max=100,
            help="Override the design's repeats (a different study: it gets its own run dir).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the design and print the planned jobs and each view's position and "
            "group counts; write nothing.",
        ),
    ] = False,
) -> None:
    """Run the whole study (or resume it: finished jobs with unchanged inputs are skipped).

    Example: ptychobench study run                      (the quick preset into runs/quick)
    Example: ptychobench study run --preset laptop --repeats 1  (the real study on a CPU, < 1 h)
    Example: ptychobench study run --preset fly64 --executor dask --workers 4
    """

    def go():
        from ptychobench.study.design import load_design, preset_text
        from ptychobench.study.run import parse_only, run_study, verify_study

        if config is not None:
            design = load_design(config)
            text = f"# copied from {config}\n" + config.read_text(encoding="utf-8")
        else:
            from ptychobench.study.design import load_preset

            design = load_preset(preset)
            text = preset_text(preset)
        if repeats is not None and repeats != design.repeats:
            from ptychobench.study.design import with_repeats

            design, text = with_repeats(design, text, repeats)
        run_dir = out if out is not None else Path("runs") / design.name
        if dry_run:
            _print_plan(design, run_dir, parse_only(only))
            return
        if post_verify_only:
            rep = verify_study(run_dir, record=True)
            _print_verify(run_dir, rep)
            return
        res = run_study(
            design,
            run_dir,
            design_text=text,
            executor=executor,
            scheduler=scheduler,
            workers=workers,
            only=parse_only(only),
            clobber=clobber,
            progress=progress,
        )
        typer.echo(
            f"{run_dir}: {len(res.ran)} job(s) run, {len(res.skipped)} up to date, "
            f"{len(res.failed)} failed, {len(res.blocked)} blocked"
        )
        if not res.ok:
            for line in res.failure_summary():
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(code=1)
        if (run_dir / "analysis" / "report.html").exists() and not only:
            _print_verdict(run_dir, design.repeats)
            typer.echo(f"report: {run_dir / 'analysis' / 'report.html'}")

    _run(go)


def _print_plan(design, run_dir: Path, only: dict) -> None:
    """``study run --dry-run``: the plan check's counts and the planned jobs; nothing written."""
    from collections import Counter

    from ptychobench.study.feasibility import check_design
    from ptychobench.study.jobs import plan
    from ptychobench.study.run import select

    jobs = select(plan(design), only, design)
    feasible = check_design(design)
    kinds = ", ".join(f"{k} {n}" for k, n in Counter(j.kind for j in jobs).items())
    typer.echo(
        f"plan: {design.name}: {len(design.doses)} dose(s) × {design.repeats} repeat(s) × "
        f"{len(design.views)} view(s); {len(jobs)} jobs ({kinds})"
    )
    for line in feasible.lines():
        typer.echo(line)
    import textwrap

    for line in textwrap.wrap("jobs: " + " ".join(j.id for j in jobs), width=100):
        typer.echo(line)
    typer.echo(f"dry run: nothing written (the run would go to {run_dir})")


def _print_verdict(run_dir: Path, repeats: int) -> None:
    """The report's verdict sentences, one per view, on the terminal."""
    import json

    from ptychobench.study.report import verdict_view

    try:
        doc = json.loads((run_dir / "analysis" / "verdict.json").read_text(encoding="utf-8"))
        sentences = verdict_view(doc["verdicts"], repeats)["sentences"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # the report says why; the verdict is a convenience here
    for line in sentences:
        typer.echo(f"verdict: {line}")


def _print_verify(run_dir: Path, rep: dict, written: bool = True) -> None:
    typer.echo(
        f"{run_dir}: verification {'passed' if rep['all_valid'] else 'FAILED'}: "
        f"{rep['n_valid']}/{rep['n_checks']} checks valid"
    )
    if not rep["all_valid"]:
        from ptychobench.study.verify import failure_lines

        shown = 3 if written else rep["n_invalid"]  # nothing on disk to point to
        for line in failure_lines(run_dir, rep, shown=shown, written=written):
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(code=1)


@study_app.command("report")
def study_report(
    run_dir: Annotated[Path, typer.Argument(help="A study run directory.")],
) -> None:
    """Re-aggregate a run's comparisons and rewrite analysis/ (report.html, tables, plots).

    Example: ptychobench study report runs/quick
    """

    def go():
        from ptychobench.study.run import report_study

        paths = report_study(run_dir)
        typer.echo(f"wrote {len(paths)} file(s) in {run_dir / 'analysis'}")

    _run(go)


@study_app.command("verify")
def study_verify(
    run_dir: Annotated[Path, typer.Argument(help="A study run directory.")],
) -> None:
    """Re-check a finished run without recomputing (hashes, agreement, failures, split).

    Example: ptychobench study verify runs/quick
    """

    def go():
        from ptychobench.study.run import verify_study

        _print_verify(run_dir, verify_study(run_dir), written=False)

    _run(go)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
