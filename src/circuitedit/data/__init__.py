"""Facts and requests: `EditRequest`, the built-in fact sets shipped in this folder (control
facts, retain prompts, subject pool, demo edits) and the dataset loaders (CounterFact, zsRE,
Sports Facts). May import `core` and `models`."""
