"""Run an exported HCFormer (``tools/export_model.py``) without detectron2 or hcformer.

What a deployment needs next to the model file: the export's description (``contract``), the
post-processing the eager model uses too (``postprocess``), the runner (``exported_model``) and
the prediction files it writes (``prediction_files``). Nothing here imports detectron2 or the
``hcformer`` package; post-processing runs on torch (CPU is enough), an ONNX model on
onnxruntime.
"""
