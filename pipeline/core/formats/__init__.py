"""Input formats: each turns one decoded message into an AccessRecord."""
