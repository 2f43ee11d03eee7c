"""The service's routes: :mod:`~.service` (``/health``, ``/model``, ``/docs``, the web page) and
:mod:`~.prediction` (``/predict``, ``/explain``)."""
