"""How the passages reach the model's cache: split apart (``parallel_prompt``), encoded once and reused from
the passage-KV store (``parallel_prefill``, ``passage_kv_store``, ``kv_int8``), partly recomputed across
passages (``kv_blend``), or pruned to the passages the question is most likely under (``passage_pruning``)."""
