"""Delivery to clinicians: checked image input, one prediction engine for predict and serve
(PyTorch or ONNX Runtime), per-image reports, the REST service and its audit log."""
