"""Shared primitives, model-family agnostic: tokens and padded batches, forward passes and the
chunked LM head, greedy decoding, answer matching, the next-token scan, the reference cache,
atomic files. Imports nothing else of circuitedit."""
