"""Feedback on answers: addressable answers, signals, rewards and the preference pairs they imply."""
