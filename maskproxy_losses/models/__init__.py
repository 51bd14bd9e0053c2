"""Encoders and feature front ends: ResNetSE34L (the paper's), the authors' log-mel front end
and SpeechBrain's Fbank wiring."""
