"""Shared plumbing: the one error type and CLI wrapper, atomic files, numeric precision."""
