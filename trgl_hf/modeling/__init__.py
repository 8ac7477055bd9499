"""The TRGL model: its config, the model that cuts a base into modules with auxiliary heads, the losses and transport
schedule, the tasks, the architectures it can cut (`architectures/`) and the remote code a saved model carries.

Nothing here imports `training/`, `distributed/`, `export/` or `hub/`: a saved model's remote code bundles this package
and `models/` only (a test checks it).
"""
