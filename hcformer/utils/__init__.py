"""Helpers that are not part of the model: pictures of the hierarchy (``hierarchy_visualization``),
writing predictions to files (``prediction_files``). Import the modules themselves: they pull in
detectron2's Visualizer (matplotlib), which the model does not need."""
