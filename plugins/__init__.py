"""Built-in plugins. Each module is one plugin, registered through the ``adapt``
entry-point group in pyproject.toml exactly as a third-party plugin would be."""
