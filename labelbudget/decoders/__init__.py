"""CTC decoders, one module each with `build(**options) -> Decoder` (labelbudget.decoding)."""
