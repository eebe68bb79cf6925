"""The probe: how a network's feature maps follow a shifted input, layer by layer.

``engine`` (the one shifted forward pass), ``layerwise`` (:func:`probe`, :class:`ProbeResult`), ``layouts``
(which axes are spatial), ``borders`` (how layers treat the border), ``equivariance`` (comparing maps),
``explore`` (an explorer's frames and numbers), ``frames`` (frames packed for the page).

It re-exports what the module ``shiftlab.probe`` gave (now ``shiftlab.probing.layerwise``).
Inside shiftlab, import from the defining module (``shiftlab.probing.layerwise``), never from here
(tests/test_architecture.py checks it).
"""

from shiftlab.probing.layerwise import (
    DEFAULT_LAYER_TYPES,
    OUTPUT,
    PREFIX,
    ProbeOptions,
    ProbeResult,
    probe,
    probe_engine,
    probe_with,
    select_layers,
)

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "OUTPUT",
    "PREFIX",
    "ProbeOptions",
    "ProbeResult",
    "probe",
    "probe_engine",
    "probe_with",
    "select_layers",
]
