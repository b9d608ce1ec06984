"""Every device states its radio's energy figures; a bad radio section is a clear error."""

import pytest
import yaml

from splitrl.profiles import ProfileError, load_device
from splitrl.profiles.radio import RADIO_FIELDS


def _edit_radio(path, **changes):
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            del doc["radio"][key]
        else:
            doc["radio"][key] = value
    path.write_text(yaml.safe_dump(doc))


def test_the_phone_has_huangs_lte_power_model():
    r = load_device("galaxy-s23").radio
    assert r.link == "lte"
    assert (r.transfer_w, r.tx_w_per_mbps, r.rx_w_per_mbps) == (1.28804, 0.43839, 0.05197)
    assert (r.tail_w, r.tail_s, r.promotion_w, r.promotion_s) == (1.06, 11.576, 1.2107, 0.2601)
    # 5 Mbit/s up and 1 down: beta + alpha_u * 5 + alpha_d * 1 (Huang et al. 2012, their power model)
    assert r.transfer_power_w(5.0, 1.0) == pytest.approx(1.28804 + 5 * 0.43839 + 0.05197)
    assert r.transfer_power_w(0.0, 0.0) == 0.0


@pytest.mark.parametrize("name", ["jetson-orin-nx-16gb", "raspberry-pi-5", "this-host"])
def test_wifi_edges_have_a_short_tail_and_cheap_promotion(name):
    r = load_device(name).radio
    phone = load_device("galaxy-s23").radio
    assert r.link == "wifi" and 0 < r.tail_s < 1 and r.promotion_s < phone.promotion_s
    assert r.tail_s * r.tail_w < phone.tail_s * phone.tail_w / 100   # LTE's tail costs >100x Wi-Fi's


@pytest.mark.parametrize("name", ["a100-80gb", "h100-80gb"])
def test_clouds_are_wired_and_draw_no_radio_power(name):
    r = load_device(name).radio
    assert r.link == "wired" and all(getattr(r, k) == 0 for k in RADIO_FIELDS)


def test_missing_radio_figure_names_file_and_field(data_copy):
    _edit_radio(data_copy / "devices/galaxy-s23.yaml", tail_s=None)
    with pytest.raises(ProfileError, match=r"galaxy-s23\.yaml.*radio\.tail_s.*missing"):
        load_device("galaxy-s23", data_copy)


@pytest.mark.parametrize("device,changes,fragments", [
    ("a100-80gb", {"link": "lte"}, ("radio.link", "wired")),
    ("a100-80gb", {"tail_w": 0.5}, ("radio.tail_w", "must be 0 on a wired link")),
    ("galaxy-s23", {"transfer_w": 0.0}, ("radio.transfer_w", "> 0 on a lte link")),
    ("galaxy-s23", {"link": "5g"}, ("radio.link", "must be one of")),
    ("raspberry-pi-5", {"promotion_s": -0.1}, ("radio.promotion_s", ">= 0")),
    ("raspberry-pi-5", {"tail_mw": 1.0}, ("radio.tail_mw", "unknown field")),
])
def test_bad_radio_sections(data_copy, device, changes, fragments):
    _edit_radio(data_copy / f"devices/{device}.yaml", **changes)
    with pytest.raises(ProfileError) as err:
        load_device(device, data_copy)
    for frag in (f"{device}.yaml", *fragments):
        assert frag in str(err.value)
