"""Drafters for the speculative loop: n-grams of the retrieved passages (``retrieval``), a small draft model
(``draft_model``), and the two fused (``fused``, RASD)."""
