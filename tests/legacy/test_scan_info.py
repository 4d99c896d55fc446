"""scan_info as BLISS clients read it (issue 13 item 14)."""

from __future__ import annotations

from scanstream import get_session_node
from scanstream.sim import SavingConfig
from scanstream.sim.catalogue import run_catalogue


def test_plain_api_scans_get_chain_devices_and_channels(store, session):
    with session.create_scan("plain") as scan:
        axis = scan.create_container("axis")
        roby = axis.create_channel("roby")
        timer = axis.create_container("timer")
        diode = timer.create_container("ctrl").create_channel("ctrl:diode")
        mca = timer.create_channel("spectrum", "float32", (8,))
        scan.prepared()
        roby.emit(1.0)
        diode.emit(2.0)
        mca.emit([0.0] * 8)
    info = get_session_node(session.name, store=store).get_scan(scan.number).info
    chain = info["acquisition_chain"]
    assert list(chain) == ["axis"]
    assert chain["axis"]["master"]["scalars"] == ["axis:roby"]
    assert chain["axis"]["scalars"] == ["ctrl:diode"]
    assert chain["axis"]["spectra"] == ["timer:spectrum"]
    assert chain["axis"]["devices"] == ["axis", "timer", "ctrl"]
    assert info["devices"]["ctrl"]["channels"] == ["ctrl:diode"]
    assert info["devices"]["axis"]["channels"] == ["axis:roby"]
    assert info["channels"]["timer:spectrum"]["dim"] == 1
    assert info["instrument"] == {} and info["scan_meta_categories"] == ["instrument"]


def test_a_controller_under_two_top_masters_is_a_device_of_each(store, session):
    with session.create_scan("two") as scan:
        for timer, diode in (("timer1", "diode"), ("timer2", "diode2")):
            ctrl = scan.create_container(timer).create_container("ctrl")
            ctrl.create_channel(f"ctrl:{diode}").emit(1.0)
    info = get_session_node(session.name, store=store).get_scan(scan.number).info
    chain, devices = info["acquisition_chain"], info["devices"]
    assert chain["timer1"]["devices"] == ["timer1", "ctrl"]
    assert chain["timer2"]["devices"] == ["timer2", "timer2:ctrl"]
    assert devices["ctrl"]["channels"] == ["ctrl:diode"]
    assert devices["timer2:ctrl"]["channels"] == ["ctrl:diode2"]


def test_given_keys_are_kept_and_named_devices_completed(store, session):
    given = {"acquisition_chain": {"axis": {"master": {"scalars": ["axis:roby"]}}}}
    with session.create_scan("given", given) as scan:
        scan.create_container("axis").create_channel("axis:roby").emit(1.0)
    info = get_session_node(session.name, store=store).get_scan(scan.number).info
    assert info["acquisition_chain"]["axis"]["master"] == {"scalars": ["axis:roby"]}
    assert info["acquisition_chain"]["axis"]["devices"] == ["axis"]
    assert info["devices"]["axis"] == {"channels": ["axis:roby"]}


def test_every_chain_device_of_the_catalogue_is_in_devices(store, session, tmp_path):
    results = run_catalogue(session, SavingConfig(tmp_path, session.name))
    node = get_session_node(session.name, store=store)
    for result in results:
        info = node.get_scan(result.number).info
        top_master_of = {}  # as watch_session_scans maps each channel to its top master
        for master, entry in info["acquisition_chain"].items():
            for device in entry["devices"]:
                assert device in info["devices"], (result.label, master, device)
                for channel in info["devices"][device].get("channels", []):
                    top_master_of[channel] = master
        scan_node = node.get_scan(result.number)
        for member in scan_node.load_nodes():
            if member.type == "channel":
                top = member
                while top.parent is not scan_node:
                    top = top.parent  # up to the top master
                assert top_master_of.get(member.fullname) == top.name, (result.label, member)
        if result.label == "two_top_masters":
            assert info["npoints"] == 2
            assert [e["npoints"] for e in info["acquisition_chain"].values()] == [2, 50]
        # Every scan, groups and sequences included, has what BLISS clients read.
        assert isinstance(info["instrument"], dict), result.label
        assert "instrument" in info["scan_meta_categories"], result.label
