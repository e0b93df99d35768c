"""One module per CLI leaf command: `add_arguments(parser)` and `run(args)`; see maebench.cli."""
