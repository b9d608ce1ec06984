"""The radio a device reaches the cloud through: what energy its transfers really cost.

The model is the one Huang et al. fitted to a phone on a commercial LTE network ("A Close
Examination of Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012):
  - while data moves, the radio draws  transfer_w + tx_w_per_mbps * uplink Mbit/s
    + rx_w_per_mbps * downlink Mbit/s  (their P = alpha_u t_u + alpha_d t_d + beta); so sending B
    Mbit at t Mbit/s costs tx_w_per_mbps * B + transfer_w * B / t joules (alpha is J per Mbit);
  - between transfers it stays in the connected state (LTE RRC_CONNECTED with DRX) at connected_w;
  - after the last transfer it stays at tail_w for tail_s (the inactivity timer) before going idle;
  - leaving idle costs promotion_s of delay at promotion_w (LTE RRC_IDLE -> RRC_CONNECTED).
All powers are drawn on top of the device's power_w.idle (the radio idle is part of that figure).
A wired link (the cloud) has every figure 0. The numbers and which are verified are in
docs/datasheets.md.
"""

from __future__ import annotations

import dataclasses

from splitrl.profiles.reader import Reader

LINKS = ("lte", "wifi", "wired")
RADIO_FIELDS = ("transfer_w", "tx_w_per_mbps", "rx_w_per_mbps", "connected_w", "tail_w", "tail_s",
                "promotion_w", "promotion_s")


@dataclasses.dataclass(frozen=True)
class Radio:
    """A device's link to the cloud. Units: W, W per Mbit/s (= J per Mbit), s."""
    link: str             # "lte", "wifi" or "wired"
    transfer_w: float     # W while any data moves, whatever the rate (Huang's beta)
    tx_w_per_mbps: float  # W per Mbit/s sent, i.e. J per Mbit sent (Huang's alpha_u)
    rx_w_per_mbps: float  # W per Mbit/s received, i.e. J per Mbit received (Huang's alpha_d)
    connected_w: float    # W in the connected state between transfers (LTE RRC_CONNECTED with DRX)
    tail_w: float         # W during the tail after the last transfer ...
    tail_s: float         # ... which lasts this long before the radio goes idle
    promotion_w: float    # W while going from idle to connected ...
    promotion_s: float    # ... which delays the first transfer after idle by this long

    def transfer_power_w(self, up_mbps: float, down_mbps: float) -> float:
        """Radio power while sending at `up_mbps` and receiving at `down_mbps` Mbit/s."""
        if up_mbps <= 0 and down_mbps <= 0:
            return 0.0
        return self.transfer_w + self.tx_w_per_mbps * up_mbps + self.rx_w_per_mbps * down_mbps


def read_radio(r: Reader, role: str) -> Radio:
    """The `radio` mapping of a device file; a cloud must be wired, a wired link draws nothing."""
    rr = r.sub("radio")
    link = rr.str("link", LINKS)
    values = {k: rr.float(k, 0) for k in RADIO_FIELDS}
    rr.done()
    if role == "cloud" and link != "wired":
        raise rr.fail("link", link, "must be 'wired' for a cloud device", "a datacenter GPU reaches the network by wire")
    if link == "wired":
        powered = [k for k, v in values.items() if v != 0]
        if powered:
            raise rr.fail(powered[0], values[powered[0]], "must be 0 on a wired link",
                          "set every radio figure to 0, or give the link as lte or wifi")
    else:
        for k in ("transfer_w", "tx_w_per_mbps", "rx_w_per_mbps", "tail_s"):
            if values[k] <= 0:
                raise rr.fail(k, values[k], f"must be > 0 on a {link} link", "give the measured figure (docs/datasheets.md)")
    return Radio(link=link, **values)
