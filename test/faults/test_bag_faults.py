"""The damaged-bags fault suite (``qt-ros bench faults --only bags``): every byte flipped in MCAP
chunk data is caught by ``qt-ros convert`` and by ``qt-ros repair --check`` (before the bags had
CRCs: 2 of 24 and 1 of 24, and 22 converted silently)."""

from __future__ import annotations

import argparse

from qt_ros.faults import bag_faults


def test_every_flipped_byte_is_detected_by_convert_and_repair_check():
    counts = bag_faults.run(argparse.Namespace(seed=1, bag_copies=20))
    assert counts["damaged"] == 20
    assert counts["detected_by_convert"] == 20
    assert counts["detected_by_repair_check"] == 20
    assert counts["converted_silently"] == 0 and counts["converted_silently_differ"] == 0
