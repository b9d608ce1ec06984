"""The edge's own estimate of its link: bandwidth and RTT from the transfers it makes (EWMA), and the
cloud's wait as the cloud last published it (the PONG of the latest connection)."""

from __future__ import annotations


class LinkEstimator:
    """Bandwidth and RTT as the edge measures them on its own transfers (EWMA)."""

    def __init__(self, alpha: float = 0.3, bw0: float = 12.5e6, rtt0: float = 0.02):
        self.alpha, self.bw, self.rtt = alpha, bw0, rtt0
        self.bw_samples = self.rtt_samples = 0
        self.cloud_wait = 0.0   # s: the wait the cloud published in its last PONG (0 until one did)

    def _ewma(self, old, new, n):
        return new if n == 0 else (1 - self.alpha) * old + self.alpha * new

    def rtt_sample(self, seconds: float) -> None:
        self.rtt = self._ewma(self.rtt, max(seconds, 1e-6), self.rtt_samples)
        self.rtt_samples += 1

    def transfer(self, nbytes: int, seconds: float, crossings: int) -> None:
        """A step's network time (wall time minus the cloud's compute) for `nbytes` in `crossings`
        one-way transfers: large transfers give a bandwidth sample, small ones an RTT sample."""
        if nbytes >= 16384:
            t = seconds - crossings * self.rtt / 2
            if t > 0:
                self.bw = self._ewma(self.bw, nbytes / t, self.bw_samples)
                self.bw_samples += 1
        else:
            self.rtt_sample(2 * max(seconds - nbytes / self.bw, 0.0) / max(crossings, 1))
