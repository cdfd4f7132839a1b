"""The training machinery every editor shares: the stage loop and its losses, the KL retain
set, the frozen context, the training prompts and the shortlisted LM head."""
