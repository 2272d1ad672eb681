"""The same method as a command line, for a ``command`` arm (no entry point needed)::

    python -m ptychobench_arm_example TEST.npz OUT.npz [--iterations K] [--seed S]

reads a ptychobench dataset file and writes a reconstruction file.
"""

from __future__ import annotations

import argparse

from ptychobench.arms import ArmContext
from ptychobench.data.io import load
from ptychobench.data.recon import write_reconstruction
from ptychobench_arm_example import BackprojectionArm, BackprojectionSettings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ptychobench_arm_example")
    p.add_argument("test")
    p.add_argument("out")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    arm = BackprojectionArm("Backprojection", BackprojectionSettings(iterations=a.iterations))
    rec = arm.reconstruct(load(a.test), ArmContext(solver_seed=a.seed))
    write_reconstruction(rec, a.out)


if __name__ == "__main__":
    main()
