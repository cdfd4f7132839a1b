"""Workflows on top of the methods: the single-edit pipeline (`edit`), the bench, the edit
output directory (written and read back here) and a localization as `circuitedit localize` makes
and writes it (`localization.py`). May import every room but the CLI."""
