"""Encoders and feature front ends: ResNetSE34L (the paper's), ResNet34 (the published
r-vector / WeSpeaker layout), ECAPA-TDNN (SpeechBrain's), the authors' log-mel front end
and SpeechBrain's Fbank wiring. Every encoder takes features ``[N, T, F]`` and relative
lengths and returns ``[N, 1, emb_dim]``; the training recipe picks one with ``--encoder``
(``recipes/VoxCeleb/MaskProxy/hparams/encoders/<name>.yaml``)."""
