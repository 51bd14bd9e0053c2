"""Audio conventions and reading, trial lists, the speaker-grouped sampler, training crops and
collate, augmentation and speed perturbation."""
