"""The built-in checks, one small module per family."""
