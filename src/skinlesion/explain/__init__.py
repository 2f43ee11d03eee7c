"""Explanations of predictions (clinical decision support: show where and why, and how faithfully).

Among its modules: :mod:`skinlesion.explain.cam` (Grad-CAM, Selvaraju et al. 2017; Grad-CAM++,
Chattopadhay et al. 2018, for single models and weighted ensembles) and
:mod:`skinlesion.explain.faithfulness` (deletion/insertion, Petsiuk et al. 2018; mass in mask).
"""
