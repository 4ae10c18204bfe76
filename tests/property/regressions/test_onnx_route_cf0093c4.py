"""Regression found by tools/fuzz.py --seed 11 and shrunk by hypothesis.

The ONNX route (GroupNorm exported as Reshape -> InstanceNormalization, one group) failed:
Failed property 'onnx_route': VerificationError: pruned orig does not match the masked original (max abs error 0.127, tolerance 0.0001); nothing was written -- please report this model; pass verify=False / --no-verify to keep the unverified model
"""

from __future__ import annotations

from propcheck import check

SPEC = {'input': 'image', 'c': 3, 'blocks': [['convT', {'out': 2, 'groups': 1}], ['conv', {'out': 2, 'k': 1, 'groups': 1, 'dil': 1, 'stride': 1, 'bias': False, 'residual': False}], ['gn', {'groups': 1, 'residual': False}]], 'hw': 4, 'head': 'linear', 'extra_output': False}
BUDGET = 0.3


def test_onnx_route_cf0093c4() -> None:
    out = check(SPEC, BUDGET)
    assert out.failures == [], out.failures
