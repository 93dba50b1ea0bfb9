"""Studies: grids of stage runs (``laconic study conf/studies/<name>.yaml``), resumable, with their report."""

from laconic_ray.studies.runner import run_study

__all__ = ["run_study"]
