"""What only the training recipe uses: hparams loading, run set-up, schedules, atomic
checkpoints, checkpoint averaging, fine-tuning and the opt-in batch trace."""
