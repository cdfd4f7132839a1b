"""Shared primitives, model-family agnostic: tokens and padded batches, forward passes and the
chunked LM head, greedy decoding, answer matching, the next-token scan, the reference cache,
atomic files, what the config dataclasses share (per-field help, checks at construction).
Imports nothing else of circuitedit."""
