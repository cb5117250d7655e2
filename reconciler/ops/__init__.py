"""The operator's toolkit: every runbook procedure as one safe command.

One module per command group (``stats``, ``jobs``, ``dead_letter``,
``errors``, ``workers``, ``pause``, ``purge``, ``check``), their SQL in
``sql/ops/<module>.sql``, and what they share in ``common`` (the job filter,
confirmation, changes in batches) and ``output`` (tables and JSON).
``cli`` registers them with ``reconciler.cli``.
"""
