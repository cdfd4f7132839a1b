"""Workflows on top of the methods: the single-edit pipeline (`edit`), the bench, and the edit
output directory (written and read back here). May import every room but the CLI."""
