"""Helpers that are not part of the model: pictures of the hierarchy (``hierarchy_visualization``),
the hierarchy explorer's web pages (``hierarchy_page``, with its map format ``embedded_id_maps``
and its script, style and templates in ``explorer/``), writing predictions to files
(``prediction_files``); the pages' tests drive headless Chromium with ``tools/headless_browser.py``.
Import the modules themselves: they pull in detectron2's Visualizer (matplotlib), which the model
does not need."""
