"""HL7 v2 over MLLP: the ADT listener (admit, transfer, discharge from the hospital's interface
engine) and the results sender. `mllp` is the framing; `adt` parses and applies ADT messages
through the patient-flow services; `ack` builds the original-mode acknowledgements."""
