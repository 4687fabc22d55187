"""Helpers that are not part of the model: pictures of the hierarchy (``hierarchy_visualization``),
the hierarchy explorer's web pages (``hierarchy_page``, with its map format ``embedded_id_maps``
and its script, style and templates in ``explorer/``), headless Chromium for the pages' tests
(``headless_browser``), writing predictions to files (``prediction_files``). Import the modules
themselves: they pull in detectron2's Visualizer (matplotlib), which the model does not need."""
