"""Built-in datasets: the PhysioNet CT-ICH reader and the synthetic generator."""

from __future__ import annotations

from ichbench.data.physionet import PhysioNetSource
from ichbench.data.synth import LIMITS, SyntheticSource
from ichbench.errors import UsageError
from ichbench.hookspecs import hookimpl
from ichbench.spec import Spec, parse_int

PHYSIONET_FORM = "physionet:PATH (a folder of either release)"
SYNTHETIC_FORM = "synthetic[:PATIENTS[,SEED[,SIZE]]]"


def physionet(spec: Spec) -> PhysioNetSource:
    if not spec.args:
        raise UsageError(f"physionet: no folder given; expected {PHYSIONET_FORM}")
    return PhysioNetSource(",".join(spec.args))  # a comma may be part of the path


def synthetic(spec: Spec) -> SyntheticSource:
    if len(spec.args) > 3:
        raise UsageError(f"synthetic: got {str(spec)!r}; expected {SYNTHETIC_FORM}")
    defaults = (40, 0, 128)
    bounds = (LIMITS["patients"], (0, None), LIMITS["size"])
    values = []
    for arg, (lo, hi) in zip(spec.args, bounds, strict=False):
        value = parse_int(spec, arg, form=SYNTHETIC_FORM, minimum=lo)
        if hi is not None and value > hi:
            raise UsageError(f"synthetic: {value} must be <= {hi}; expected {SYNTHETIC_FORM}")
        values.append(value)
    patients, seed, size = (*values, *defaults[len(values):])
    return SyntheticSource(patients, seed, size)


@hookimpl
def register_datasets(register):
    register("physionet", physionet,
             help="PhysioNet CT-ICH folder, v1.3.x NIfTI or v1.0/1.2 JPG: physionet:PATH")
    register("synthetic", synthetic,
             help="Synthetic head CT in the PhysioNet layout, generated on first use: "
                  "synthetic[:PATIENTS[,SEED[,SIZE]]] (default 40,0,128)")
