"""Models of the benchmark: tabular estimators (baselines, descriptor trees) and graph networks.

Tabular models (:mod:`thermobench.models.tabular`) fit on dataset rows and save with joblib;
graph networks (:mod:`thermobench.models.nets`) train inside
:class:`thermobench.models.module.ThermoLitModule` and save as Lightning checkpoints.
"""
