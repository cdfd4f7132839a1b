"""Measuring an edit: probes and before/after snapshots, the edit metrics (new fact, forget,
F_control, neighbourhood), fluency and multiple choice. May import `localize`, `edit` and below."""
