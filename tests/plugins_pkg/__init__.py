"""A user's own package, as the tests see it: a model factory (``python:plugins_pkg.models:make_net``)
and a plugin module (``imports: [plugins_pkg.kd_plugins]``) that registers a loss and a dataset."""
