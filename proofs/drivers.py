"""The three driver-generation encodings, by their tdxmodel.abi.DRIVERS names."""

from typing import Dict

from proofs import v4_2022_04, v6_2, v6_16
from proofs.spec import DriverSpec
from tdxmodel import abi as _abi

DRIVERS: Dict[str, DriverSpec] = {d.name: d for d in (v4_2022_04.DRIVER, v6_2.DRIVER, v6_16.DRIVER)}
assert tuple(DRIVERS) == _abi.DRIVERS, "proofs must encode exactly tdxmodel.abi.DRIVERS"
