"""What every part of the backend shares: errors (errors.py), progress events (events.py), redaction of secrets
(redaction.py) and atomic writes (atomic.py). Standard library only."""
