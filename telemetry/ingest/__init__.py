"""Device ingest, one module per step of the pipeline (telemetry/ingest/pipeline.py runs them).

- `auth`: credentials, key lookup, Ed25519 signature (401)
- `validate`: the body as a typed batch (400), the key's device and the size (403, 413), then
  each reading accepted or rejected with a code
- `store`: COPY to staging and `INSERT … ON CONFLICT … RETURNING` in one transaction, with its
  provenance (`provenance`); counts come from what the transaction committed
- `publish`: live frames after the commit
- `group`: the same steps over a group of messages from many devices, stored in one transaction
  (group commit; the MQTT bridge's writer)
- `answers`: the `Answer` every step produces, and the table of error codes
"""
