"""Accuracy-aware mixed precision, its parts alone: what a layer is, the sensitivity order, the search."""

from __future__ import annotations

import pytest

from segcls.core.verification import Figure, VerificationReport
from segcls.export.mixed_precision import Layer, layer_of, macs_share, rank_layers, search_fp32


@pytest.mark.parametrize(
    "module, layer",
    [("encoder.layer1.0.bn1", "encoder.layer1.0"), ("encoder.layer2.0.downsample.1", "encoder.layer2.0"),
     ("encoder.layer3.1", "encoder.layer3.1"), ("encoder.relu", "encoder"), ("decoder.bn", "decoder"),
     ("decoder", "decoder")],
)  # fmt: skip
def test_a_layer_is_a_residual_block_or_the_rest_of_a_module(module, layer):
    assert layer_of(module) == layer


LAYERS = [Layer(name, (f"{name}/conv",), macs) for name, macs in (("a", 10), ("b", 30), ("c", 60))]


def test_the_layer_that_loses_most_labels_alone_ranks_first():
    alone = {"a": (0.99, 0.1), "b": (0.95, 0.2), "c": (0.99, 0.3)}  # agreement, error with only it quantized

    def measure(fp32_layers):
        (quantized,) = {"a", "b", "c"} - set(fp32_layers)
        return alone[quantized]

    assert [s.layer.name for s in rank_layers(LAYERS, measure)] == ["b", "c", "a"]  # ties: more error first


def report(agreement: float) -> VerificationReport:
    r = VerificationReport("int8")
    r.figures = [Figure("labels agreement", agreement, 0.99, higher_is_better=True)]
    return r


def test_search_stops_at_the_fewest_most_sensitive_layers_that_pass():
    ranked = rank_layers(LAYERS, lambda fp32: (0.9 + 0.01 * len(fp32), 0.0))
    tried = []

    def verify(layers):
        tried.append(layers)
        return report(0.98 + 0.01 * len(layers) / 2)

    result = search_fp32(ranked, verify, max_fp32=3, first=report(0.98))
    assert result.report.passed and result.tried == 2 and len(result.layers) == 2
    assert tried == [result.layers[:1], result.layers]


def test_search_gives_up_at_the_bound_with_the_last_figures():
    ranked = rank_layers(LAYERS, lambda fp32: (0.9, 0.0))
    result = search_fp32(ranked, lambda layers: report(0.5), max_fp32=2, first=report(0.4))
    assert not result.report.passed and result.tried == 2 and len(result.layers) == 2
    none = search_fp32(ranked, lambda layers: report(0.5), max_fp32=0, first=report(0.4))
    assert none.layers == () and none.report.figures[0].value == 0.4


def test_macs_share_counts_each_node_once():
    macs = {"x": 25, "y": 75}
    assert macs_share(macs, ["y", "y"]) == 0.75 and macs_share(macs, []) == 0.0 and macs_share({}, ["x"]) == 0.0
