"""The graph passes between translate and write, a step of export of their own.

:func:`prepare_for_archive` runs them in order on a translated graph (they change its
operations and variables, and add notes to ``graph.notes``);
:func:`t2n_core.writer.archive_files` then only prints the graph and the stored tensors.
Most passes are about stored tensors that can do more than a plain tensor (the optional
methods of :mod:`t2n_core.storage`): row slices cut by the tensor itself, per-channel scales
folded into a tract-native filter, dequantized views where tract cannot use a tract-native
tensor.
"""

from __future__ import annotations

import logging

from t2n_core.batched_native import split_batched_native_matmul
from t2n_core.concat_guard import guard_concat_before_native_matmul
from t2n_core.encoding import attach_encodings, is_native
from t2n_core.file_labels import assign_file_labels
from t2n_core.fold import fold_reshapes, fold_row_slices
from t2n_core.fold_scale import fold_channel_affine, guard_block_convs
from t2n_core.ir import Graph
from t2n_core.loop_weights import inline_native_loop_weights
from t2n_core.native_uses import (
    check_native_uses,
    give_native_views,
    inline_blocks_with_native_misuse,
)

logger = logging.getLogger(__name__)


def prepare_for_archive(graph: Graph) -> Graph:
    """Run the passes on ``graph`` (once) so that it can be written; returns it.

    Row slices of stored tensors that can cut their own rows are folded first, then
    per-channel affine ops after a conv with a tract-native filter (:mod:`t2n_core.fold_scale`
    notes go to ``graph.notes``); every other use of a tract-native tensor gets a view or is
    refused (:mod:`t2n_core.native_uses`).
    """
    if graph.prepared:
        return graph
    guard_block_convs(graph, is_native)
    inline_blocks_with_native_misuse(graph)
    split_batched_native_matmul(graph, is_native)
    fold_row_slices(graph, is_native)
    fold_reshapes(graph)
    labelled = assign_file_labels(graph)  # the passes below may print labels
    graph.notes += fold_channel_affine(graph, is_native)
    inline_native_loop_weights(graph, is_native)
    guard_concat_before_native_matmul(graph, is_native)
    graph.notes += give_native_views(graph)
    assign_file_labels(graph, keep_first=labelled)  # variables the passes added
    attach_encodings(graph)
    check_native_uses(graph)
    graph.prepared = True
    logger.debug("graph prepared: %d operation(s), %d stored tensor(s)",
                 len(graph.operations), len(graph.variables))  # fmt: skip
    return graph
