"""Central finite differences against the engine, in float64, for every differentiable
primitive over the shape layouts of ``_opcases`` (scalars to 3-d, broadcasting size-1 axes and
ranks, empty axes, strided and transposed views); second order for a representative set."""

import numpy as np
import pytest
from _opcases import CASES, CASES_BY_NAME, ORDER2, Call, calls, noncontig, recorded, drawn

import nodegrad as ng

MATRIX = [pytest.param(c, lay, id=f"{c.name}-{lay}") for c in CASES for lay in c.layouts]
SECOND = [pytest.param(CASES_BY_NAME[n], lay, id=f"{n}-{lay}") for n in ORDER2
          for lay in ("matrix", "size1", "rank", "noncontig") if lay in CASES_BY_NAME[n].layouts]


def test_every_differentiable_primitive_has_a_case():
    named = {p for c in CASES for p in c.prims}
    missing = sorted(n for n, p in ng.primitives.items() if p.differentiable and n not in named)
    assert not missing, f"differentiable primitives without a case in _opcases: {missing}"


def test_cases_name_registered_differentiable_primitives():
    for c in CASES:
        for p in c.prims:
            assert p in ng.primitives and ng.primitives[p].differentiable, (c.name, p)


def test_second_order_set_exists():
    assert set(ORDER2) <= set(CASES_BY_NAME)


def test_noncontig_layout_hands_ops_a_strided_transposed_view():
    seen = []

    def fn(x):
        seen.append(x._data)
        return x * 2

    call = noncontig(Call(fn, (np.arange(6.0).reshape(2, 3),)))
    assert ng.gradcheck(call.fn, *call.args)  # the entries the view skips get 0
    assert not seen[0].flags.c_contiguous and not seen[0].flags.f_contiguous
    np.testing.assert_array_equal(seen[0], np.arange(6.0).reshape(2, 3))


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), MATRIX)
@drawn(4)
def test_gradcheck(case, layout, data):
    call = data.draw(calls(case, layout))
    missing = set(case.prims) - recorded(call)
    assert not missing, f"{case.name} did not record {missing}"
    ng.gradcheck(call.fn, *call.args, **case.tol)


@pytest.mark.parametrize(("case", "layout"), SECOND)
@drawn(2)
def test_gradcheck_second_order(case, layout, data):
    call = data.draw(calls(case, layout))
    ng.gradcheck(call.fn, *call.args, order=2, **case.tol)
