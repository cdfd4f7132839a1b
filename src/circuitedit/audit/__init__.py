"""Audit an edit: is the old fact gone, or only hidden? Latent probes, indirect prompts,
formats and relearning, and a verdict. May import `evaluate` and below; the files an audit
reads and writes are `workflows.audit_files`."""

from .run import AuditConfig, AuditReport, audit_edit, relation_facts, stage_models

__all__ = ["AuditConfig", "AuditReport", "audit_edit", "relation_facts", "stage_models"]
