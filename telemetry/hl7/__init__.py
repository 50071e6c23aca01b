"""HL7 v2 over MLLP (docs/hl7.md): the ADT listener that brings the hospital's admissions,
transfers and discharges in, and the results sender. `mllp` frames bytes; `er7` reads the
header by hand; `adt` parses and validates ADT messages with hl7apy; `ack` builds the
original-mode acknowledgements; `services` applies one message in one transaction through the
patient-flow services; `listener` is the asyncio server `manage.py run_hl7` runs; `send` is a
command-line MLLP client."""
