"""The dose × overlap study: design → DAG of jobs → executors → aggregate → report → verify."""

from ptychobench.study.design import DesignError, StudyDesign, load_design, load_preset
from ptychobench.study.run import StudyError, StudyResult, report_study, run_study, verify_study

__all__ = [
    "DesignError",
    "StudyDesign",
    "StudyError",
    "StudyResult",
    "load_design",
    "load_preset",
    "report_study",
    "run_study",
    "verify_study",
]
