"""The service's routes: :mod:`~.service` (``/health``, ``/model``, ``/docs``, the web page) and
:mod:`~.prediction` (``/predict``, ``/explain``) and :mod:`~.compare` (``/compare``: two visits of one lesion)."""
