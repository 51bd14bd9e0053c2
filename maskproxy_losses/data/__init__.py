"""Training and evaluation data: audio conventions and reading, trial lists, the
speaker-grouped sampler, training crops and collate, WebDataset shards, augmentation and
speed perturbation."""
