"""A gpumesh node: config, capacity detection, the pure core, the trio runtime and the CLI."""
