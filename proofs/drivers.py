"""The driver-generation encodings, by their tdxmodel.profiles names."""

from typing import Dict

from proofs import intel_downstream, v4_2022_04, v6_2, v6_16
from proofs.spec import DriverSpec
from tdxmodel import profiles as _profiles

DRIVERS: Dict[str, DriverSpec] = {d.name: d for d in (v4_2022_04.DRIVER, v6_2.DRIVER, v6_16.DRIVER,
                                                   intel_downstream.DRIVER)}
assert tuple(DRIVERS) == _profiles.NAMES, "proofs must encode exactly the generations of tdxmodel.profiles"
