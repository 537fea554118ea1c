"""The Flower App Bundle that `flwr run .` builds from this repository: under Flower's size limit
however many results are archived under docs/ and bench/, and holding what the apps import and read."""

import io
import zipfile

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE
from support import ROOT


def test_bundle_is_the_apps_code_and_device_profiles():
    fab = build_fab_from_disk(ROOT)
    assert len(fab) < FAB_MAX_SIZE / 4, f"the bundle is {len(fab)} bytes"
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    for needed in ("strategies/server_app.py", "clients/client_app.py", "fedprune/config.py",
                   "flower_io/records.py", "sim_configs/fleets/devices.toml"):
        assert needed in names, f"{needed} missing from the bundle"
    carried = [n for n in names if n.split("/")[0] in ("docs", "bench", "tests", "results")]
    assert not carried, f"the bundle carries results and tests: {carried[:5]}"
