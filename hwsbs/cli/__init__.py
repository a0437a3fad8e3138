"""Command-line interface (``hwsbs``)."""
