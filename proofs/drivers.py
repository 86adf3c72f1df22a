"""The driver-generation encodings, by their tdxmodel.profiles names."""

import dataclasses
from typing import Dict

from proofs import intel_downstream, v4_2022_04, v6_2, v6_16
from proofs.spec import DriverSpec
from tdxmodel import profiles as _profiles

# The configfs-tsm generations keep an earlier generation's ioctl path (their profile's ``ops``): the
# same encoding under their own profile (quote.md §2.1; the quote path's theorems are their own).
_BY_OPS = {d.p.ops: d for d in (v4_2022_04.DRIVER, v6_2.DRIVER, v6_16.DRIVER, intel_downstream.DRIVER)}
DRIVERS: Dict[str, DriverSpec] = {
    p.name: (_BY_OPS[p.ops] if _BY_OPS[p.ops].profile == p.name
             else dataclasses.replace(_BY_OPS[p.ops], profile=p.name))
    for p in _profiles.PROFILES}
assert tuple(DRIVERS) == _profiles.NAMES, "proofs must encode exactly the generations of tdxmodel.profiles"
