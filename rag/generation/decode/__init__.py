"""The decoding loop's parts: the KV-cached batch of prompt rows, sampling, the speculative loop over a token
tree (the plain path is the loop with no drafter), and context-aware decoding's combination of two rows."""
