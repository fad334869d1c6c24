"""The KMS layer: logical keys (ids, aliases, versions, states) over key stores (one HSM
cluster each), rotation, scheduled deletion, key policies and grants, the audit trail, and
the metadata store they live in (SQLite by default, PostgreSQL for several machines).

Every face (the library's client, the CLI, the HTTP API) goes through this layer: state,
permission and audit on every call. It imports the cluster and envelope layers below it,
never a face above. Design and guarantees: ``docs/KMS.md``.
"""
