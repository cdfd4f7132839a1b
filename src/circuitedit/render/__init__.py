"""Turning results into what a person reads: terminal tables (rich), Markdown, plots and the
self-contained HTML reports. Pure functions of result dicts; may import `audit` and below."""
