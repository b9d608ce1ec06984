"""`splitrl-eval`: every policy on the same episodes (common random numbers) -> statistics with
intervals (`stats`), tables and the claims table (`report`), plots (`plots`); `run` drives it."""
