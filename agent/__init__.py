"""chainwatch user-space agent: event decoding, process lineage and detection."""
