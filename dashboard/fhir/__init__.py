"""FHIR R4 read API and bulk export at /fhir/R4/ (contract section 5, docs/fhir.md).

`resources` builds the JSON of each resource (pure functions, no queries), `ids` encodes the
Observation ids, `selectors` reads what a search or read needs (through telemetry's selectors),
`exports` holds the bulk-export jobs (services and the engine processor that runs them), and
`views` / `urls` are the edge: access decided and audited by audit.access.policy, every error an
OperationOutcome.
"""
