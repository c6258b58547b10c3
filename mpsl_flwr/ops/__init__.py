"""Process and deployment tooling: ``mpsl-run``, ``mpsl-deploy`` and their helpers.

A leaf: the app (``strategies``, ``clients`` and the rest of ``mpsl_flwr``) never
imports it. It imports nothing itself, so that a helper started with ``python -m``
(``mpsl_flwr.ops.fast_flower``, ``mpsl_flwr.ops.warm_clientapp``) loads only what it needs.
"""
