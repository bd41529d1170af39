"""cortexctl commands, one module per capability, each with `register(sub)`."""
