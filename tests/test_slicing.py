"""Slicing: tiles cover the image, merging leaves no duplicates, and tiles find a small real face
that the whole-image pass misses (a face crop from the dev data placed small in a large canvas)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from veil.engine.slicing import fuse, intersections, iou_matrix, merge, tile_grid


def test_tile_grid_covers_the_image_with_overlap():
    tiles = tile_grid(2400, 3200, 1280, overlap=0.25)
    covered = np.zeros((2400, 3200), bool)
    for t in tiles:
        assert t.x1 - t.x0 == 1280 and t.y1 - t.y0 == 1280
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    assert all(b - a <= 1280 * 0.75 for a, b in zip(xs, xs[1:]))  # neighbours overlap >= 25 %
    assert tile_grid(300, 500, 640) == [tile_grid(300, 500, 640)[0]]  # small image: one tile


def test_merge_removes_duplicates_and_absorbs_cut_boxes():
    boxes = np.array(
        [
            [100, 100, 150, 160],  # a face seen by the whole-image pass
            [102, 101, 151, 158],  # the same face seen again by a tile
            [96, 98, 124, 160],  # its left part, cut by a tile edge (x=124), reaching a bit further out
            [400, 400, 440, 450],  # another face
            [300, 100, 324, 150],  # a cut box with no whole counterpart: kept as it is
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.6], np.float32)
    cut = np.array([False, False, True, False, True])
    out, out_scores = merge(boxes, scores, cut)
    assert len(out) == 3
    assert out_scores[0] == pytest.approx(0.95)  # the merged face keeps the best score of its group
    np.testing.assert_allclose(out[0], [96, 98, 150, 160])  # grown by the cut part; the duplicate dropped
    assert any(np.allclose(b, [400, 400, 440, 450]) for b in out)
    assert any(np.allclose(b, [300, 100, 324, 150]) for b in out)
    ious = iou_matrix(out, out)
    assert (ious[~np.eye(len(out), dtype=bool)] < 0.5).all()


def test_merge_can_say_which_input_each_kept_box_is():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    out, _, index = merge(boxes, np.array([0.5, 0.9, 0.7], np.float32), return_index=True)
    assert list(index) == [1, 2]
    np.testing.assert_array_equal(out, boxes[index])


def test_fuse_averages_views_of_one_face_and_discounts_lone_boxes():
    boxes = np.array(
        [
            [100, 100, 140, 150],  # view A
            [104, 104, 144, 154],  # view B, the same face slightly shifted
            [300, 300, 320, 325],  # a box only one view reported
        ],
        np.float32,
    )
    scores = np.array([0.6, 0.2, 0.6], np.float32)
    marks = np.array([np.arange(10), np.arange(10) + 8, np.full(10, np.nan)], np.float32)
    out, out_scores, out_marks = fuse(boxes, scores, marks, views=2)
    assert len(out) == 2
    np.testing.assert_allclose(out[0], [101, 101, 141, 151])  # score-weighted mean (0.6 : 0.2)
    assert out_scores[0] == pytest.approx(0.4)  # both views agree: the mean of their scores
    np.testing.assert_allclose(out_marks[0], np.arange(10) + 2)
    np.testing.assert_allclose(out[1], boxes[2])
    assert out_scores[1] == pytest.approx(0.3) and np.isnan(out_marks[1]).all()  # one of two views: halved


def test_fuse_counts_per_box_how_many_views_looked():
    # Two views looked at the first face and found it; four looked at the second, where only two found it.
    boxes = np.array([[0, 0, 40, 50], [2, 2, 42, 52], [200, 0, 240, 50], [202, 2, 242, 52]], np.float32)
    scores = np.array([0.6, 0.4, 0.6, 0.4], np.float32)
    _, out_scores, _ = fuse(boxes, scores, views=np.array([2, 2, 4, 4]))
    assert out_scores == pytest.approx([0.5, 0.25])


def _face_crop(shared_data) -> np.ndarray:
    item = json.loads((shared_data / "dlib_faces" / "labels.json").read_text())["items"][0]
    image = cv2.cvtColor(cv2.imread(str(shared_data / "dlib_faces" / item["file"])), cv2.COLOR_BGR2RGB)
    x1, y1, x2, y2 = item["faces"][0]
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.8  # the face with its head around it
    return image[int(cy - side / 2) : int(cy + side / 2), int(cx - side / 2) : int(cx + side / 2)]


def test_slicing_finds_a_small_face_the_whole_image_pass_misses(shared_data, detection_models):
    from veil.engine.config import ModelConfig
    from veil.engine.detect import Detector

    face = cv2.resize(_face_crop(shared_data), (24, 24), interpolation=cv2.INTER_AREA)
    canvas = np.full((2400, 3200, 3), 120, np.uint8)
    placed = [(1900, 1500), (1268, 600)]  # the second straddles the edge x=1280 of the first tile column
    for x, y in placed:
        canvas[y : y + 24, x : x + 24] = face
    truth = np.array([[x, y, x + 24, y + 24] for x, y in placed], np.float32)

    whole = Detector(ModelConfig(slicing=False)).detect_faces(canvas)
    assert len(whole) == 0, "precondition: the whole-image pass (downscaled to 2048 px) misses 24 px faces"

    sliced = Detector(ModelConfig(slicing=True)).detect_faces(canvas)
    assert len(sliced) == 2, sliced.xyxy  # both faces, once each
    inside = (
        intersections(sliced.xyxy, truth)
        / np.maximum((sliced.xyxy[:, 2] - sliced.xyxy[:, 0]) * (sliced.xyxy[:, 3] - sliced.xyxy[:, 1]), 1e-6)[:, None]
    )
    assert (inside.max(axis=0) > 0.8).all(), sliced.xyxy  # each placed face has a box on it
    assert ((sliced.scores >= 0.5) & (sliced.scores <= 1)).all()


def test_windows_merge_overlapping_surroundings_and_keep_each_core():
    from veil.engine.slicing import centres_in, windows

    boxes = np.array([[10, 10, 20, 20], [22, 10, 32, 20], [100, 100, 140, 150], [300, 300, 310, 310]], np.float32)
    found = windows(boxes, 400, 400, grow=1.2, margin=4, context=8)
    assert len(found) == 3  # the first two boxes' windows overlap: one window
    (first, cores), (second, _), (third, _) = found
    assert (first.x0, first.y0) == (0, 0) and len(cores) == 2
    assert second.x0 <= 100 - 4 - 4 - 8 and second.x1 >= 140 + 4 + 4 + 8
    assert third.x1 <= 400
    assert centres_in(boxes, cores).tolist() == [True, True, False, False]
    assert windows(np.zeros((0, 4), np.float32), 10, 10, grow=1, margin=0, context=0) == []
