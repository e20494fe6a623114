"""Built-in exporters (ONNX, ONNX Runtime optimisation and quantisation, .ort),
registered through the ``adapt`` entry-point group like any plugin."""
