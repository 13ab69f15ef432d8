"""Linear-region counting: exact counts on networks whose kinks are known by construction."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics import regions


def _set(lin, w, b):
    with ng.no_grad():
        lin.weight.data[:] = np.asarray(w, dtype=np.float32)
        lin.bias.data[:] = np.asarray(b, dtype=np.float32)
    return lin


def test_line_count_matches_known_kinks():
    net = nn.Sequential(_set(nn.Linear(1, 3), [[1.0], [1.0], [1.0]], [0.5, 0.0, -0.5]),
                        nn.ReLU(), nn.Linear(3, 1))
    assert regions.count_regions_line(net, [-1.0], [1.0], n=1001) == 4
    assert regions.count_regions_line(net, [0.6], [1.0], n=101) == 1  # no kink on the segment


def test_tent_map_gives_two_to_the_depth_pieces():
    for depth in (1, 3, 5):
        layers = []
        for i in range(depth):
            w = [[1.0], [1.0]] if i == 0 else [[2.0, -4.0], [2.0, -4.0]]
            layers += [_set(nn.Linear(1 if i == 0 else 2, 2), w, [0.0, -0.5]), nn.ReLU()]
        net = nn.Sequential(*layers, nn.Linear(2, 1))
        assert regions.count_regions_line(net, [1e-4], [1 - 1e-4], n=5000) == 2 ** depth


def test_two_axis_units_make_four_quadrants():
    net = nn.Sequential(_set(nn.Linear(2, 2), [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
                        nn.ReLU(), nn.Linear(2, 1))
    rm = regions.region_map(net, 1.0, n=51)
    assert rm.count == 4 and rm.labels.shape == (51, 51)
    assert rm.labels[0, 0] != rm.labels[-1, -1] and rm.labels[0, -1] != rm.labels[-1, 0]
    # shifted window: only the positive quadrant
    assert regions.count_regions_2d(net, (0.1, 1.0), n=20) == 1


def test_lines_in_general_position():
    """k lines crossing the square, each pair meeting inside it: 1 + k + C(k, 2) regions."""
    ang = np.array([0.1, 1.2, 2.3])
    w = np.stack([np.cos(ang), np.sin(ang)], 1)
    net = nn.Sequential(_set(nn.Linear(2, 3), w, [0.05, -0.03, 0.02]), nn.ReLU(),
                        nn.Linear(3, 1))
    assert regions.count_regions_2d(net, 1.0, n=301) == 1 + 3 + 3


def test_slice_of_higher_dimensional_input_and_deeper_layers_add_regions():
    ng.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(), nn.Linear(8, 8), nn.ReLU(),
                        nn.Linear(8, 1))
    p = regions.activation_patterns(net, np.zeros((5, 3)))
    assert p.shape == (5, 16) and p.dtype == bool
    rm = regions.region_map(net, 2.0, n=60, origin=[0.0, 0.0, 0.5], u=[1, 0, 0], v=[0, 1, 1])
    shallow = nn.Sequential(net[0], net[1], nn.Linear(8, 1))
    assert rm.count >= regions.region_map(shallow, 2.0, n=60, origin=[0.0, 0.0, 0.5],
                                          u=[1, 0, 0], v=[0, 1, 1]).count > 1


def test_pattern_ids_label_by_first_appearance():
    p = np.array([[1, 0], [0, 0], [1, 0], [1, 1]], dtype=bool)
    ids, count = regions.pattern_ids(p)
    assert count == 3 and list(ids) == [0, 1, 0, 2]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no ReLU"):
        regions.activation_patterns(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), np.zeros((1, 2)))
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="same size"):
        regions.count_regions_line(net, [0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="pass u and v"):
        regions.region_map(net, origin=[0.0, 0.0, 0.0])
