"""Delivery to clinicians: checked image input, one prediction engine for predict and serve
(PyTorch or ONNX Runtime) whose one record per image (:mod:`skinlesion.records`) every output
serialises: the batch run's CSV files, per-image reports, the REST service and its audit log."""
