"""Building blocks shared by the model families: attention over the paged KV cache, rotary, norms."""
