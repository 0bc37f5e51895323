"""Evaluation of a run: scores at 1, 2, 4, 8 flow-map steps and of the teacher ODE, and pictures."""

from fmmkit.evaluation.scores import (
    EvalRow,
    evaluate,
    flow_map_rows,
    format_table,
    is_image_data,
    sampler_rows,
    save_panels,
    save_pictures,
)

__all__ = ["EvalRow", "evaluate", "flow_map_rows", "format_table", "is_image_data", "sampler_rows", "save_panels",
           "save_pictures"]
