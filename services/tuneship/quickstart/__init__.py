"""The offline quickstart: tiny chat models built on the spot and sample conversations.

``tuneship run`` with no spec builds ``tiny-chatml`` (``tiny_models.build_fixture``)
and the pirate conversations (``conversations.write_sample_datasets``), so a fresh
machine with no network runs the whole pipeline; ``tuneship fixtures build`` builds any
of them by name. The tests and benchmarks use the same builders. Depends on
``tuneship.common`` only.
"""
