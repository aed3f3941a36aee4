"""Pretraining objectives, one module each (the name is params `pretrain.objective`) with
`targets(unlabeled rows, corpus, params pretrain, encoder shape, seed) -> nn.Module`: a module mapping stacked
log-mel frames (B, T, STACK*n_mels) to target ids, or one with `per_utterance` whose `labels(id, samples)` the
batches carry (labelbudget.ssl trains on either). A new objective is one module here."""
