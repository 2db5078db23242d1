"""Leak measure: objects a dense reference detector sees that Veil's blur mask does not cover.

    python bench/leak_check.py CLIP [--config JSON] [--every 1] [--cache DIR] [--segment-seconds S]
                               [--min-width N]

The reference runs the detector on *every* frame at full resolution with slicing on and low
thresholds (0.3), for faces and plates whatever the config, and keeps its detections with score
>= 0.6 as real objects (without the plausibility bounds Veil applies: `veil.engine.bounds`); only the
kinds the config asks Veil to redact are counted. Veil runs as
`detect_video(CLIP, config)` (the same boxes `anonymize_video` blurs); its blur mask per frame is
`redact.redaction_mask`. A reference box counts as a **leaked object-frame** when less than 70% of
it lies inside Veil's mask in that frame. Reference boxes are linked into tracks (IoU tracker), and
for each track the longest run of consecutive leaked frames is reported. With `--min-width N`,
reference objects narrower than N px (a plate that small is not legible) are counted apart, so a
few tiny plates in a distant corner do not hide real leaks (nor count as them: the exit status).

**Over-blur**, per redacted kind: the share of the frame that Veil's mask for that kind blurs outside
every reference box of that kind (any reference score, down to 0.3: a weak real object is not
over-blur), mean over the checked frames and the worst frame; and the largest single box Veil drew
of that kind in any frame (width x height, frame). Leaks stay the first rule; this is the other side
of the trade-off (a blur over half a car hides what the footage is for).

`--every N` checks only every N-th frame (the reference is slow: several seconds per 1080p frame on
two cores); `--cache` keeps the reference detections, so Veil can be re-checked quickly after a
change. `--segment-seconds S` checks the boxes of a run split into segments of about S seconds
(`veil.engine.segments`: what `veil anonymize --jobs N` and the service's workers redact). Exit status 1
when anything leaked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

SCORE = 0.6
COVER = 0.7
REFERENCE_THRESHOLD = 0.3


def reference_detections(clip: Path, every: int, cache: Path | None) -> dict[int, list]:
    """{frame index: [[x1, y1, x2, y2, score, kind], ...]} for the checked frames (faces and plates)."""
    from veil.engine.config import ModelConfig
    from veil.engine.detect import get_detector
    from veil.engine.detections import Detections

    ref_config = ModelConfig(
        blur_face=True,
        enable_lp=True,
        slicing=True,
        blur_threshold=REFERENCE_THRESHOLD,
        lp_threshold=REFERENCE_THRESHOLD,
    )
    key = hashlib.sha256(
        f"{clip.resolve()}|{clip.stat().st_size}|{clip.stat().st_mtime}|{every}|{ref_config.model_dump_json()}".encode()
    ).hexdigest()[:16]
    cached = cache / f"reference-{clip.stem}-{key}.json" if cache else None
    if cached and cached.is_file():
        return {int(k): v for k, v in json.loads(cached.read_text()).items()}
    detector = get_detector(ref_config)
    out: dict[int, list] = {}
    started = time.perf_counter()
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or 0
        for index, frame in enumerate(c.decode(stream)):
            if index % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            # Both passes, without `Detector.detect`'s plausibility bounds (veil.engine.bounds): a real
            # object they dropped must show as a leak here.
            dets = Detections.concat([detector.detect_faces(rgb), detector.detect_plates(rgb)])
            out[index] = [[*map(float, b), float(s), int(k)] for b, s, k in zip(dets.xyxy, dets.scores, dets.kinds)]
            if index % (every * 20) == 0:
                print(
                    f"  reference: frame {index}/{total} ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out))
    return out


def coverage(mask: np.ndarray, box) -> float:
    h, w = mask.shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        return 1.0
    return float(mask[y1:y2, x1:x2].mean())


def over_blur(shape: tuple[int, int], drawn, config, kind: int, rows: list) -> float:
    """Share of the frame that Veil's mask for `kind` covers outside every reference box of `kind`."""
    from veil.engine.redact import redaction_mask

    if drawn is None or not len(drawn.kind(kind)):
        return 0.0
    mask = redaction_mask(shape, drawn.kind(kind), config)
    h, w = shape
    for row in rows:
        if int(row[5]) == kind:
            x1, y1 = max(0, int(np.floor(row[0]))), max(0, int(np.floor(row[1])))
            mask[y1 : min(h, int(np.ceil(row[3]))), x1 : min(w, int(np.ceil(row[2])))] = False
    return float(mask.mean())


def largest_box(frames, kind: int) -> tuple[float, float, int] | None:
    """(width, height, frame) of the largest box (by area) Veil drew of `kind` in any frame."""
    best = None
    for f in frames:
        sel = f.detections.kind(kind)
        if not len(sel):
            continue
        wh = sel.xyxy[:, 2:] - sel.xyxy[:, :2]
        i = int(np.argmax(wh[:, 0] * wh[:, 1]))
        if best is None or wh[i, 0] * wh[i, 1] > best[0] * best[1]:
            best = (float(wh[i, 0]), float(wh[i, 1]), f.index)
    return best


def link_tracks(reference: dict[int, list], every: int) -> dict[tuple[int, int], int]:
    """(frame, detection position) -> track id: each box continues the nearest box of its kind in
    the previous checked frame when their centres are within (1 + every) box diagonals (small fast
    plates need not overlap between checked frames)."""
    ids: dict[tuple[int, int], int] = {}
    previous: list[tuple[np.ndarray, int, int]] = []  # (box, kind, id)
    next_id = 1
    last_index = None
    for index in sorted(reference):
        current = []
        taken: set[int] = set()
        for pos, row in enumerate(reference[index]):
            box, kind = np.array(row[:4]), int(row[5])
            centre, diag = (box[:2] + box[2:]) / 2, float(np.hypot(*(box[2:] - box[:2])))
            best, best_d = None, (1 + every) * diag
            if last_index is not None and index - last_index <= 3 * every:
                for other, okind, oid in previous:
                    d = float(np.hypot(*((other[:2] + other[2:]) / 2 - centre)))
                    if okind == kind and oid not in taken and d <= best_d:
                        best, best_d = oid, d
            if best is None:
                best, next_id = next_id, next_id + 1
            taken.add(best)
            ids[(index, pos)] = best
            current.append((box, kind, best))
        if current:
            previous, last_index = current, index
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", type=Path)
    ap.add_argument("--config", default="{}", help="Veil model_config JSON (default: seed defaults)")
    ap.add_argument("--every", type=int, default=1, help="check every N-th frame")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep reference detections in")
    ap.add_argument("--segment-seconds", type=float, default=0, help="check a run split into segments this long")
    ap.add_argument(
        "--min-width",
        type=float,
        default=0,
        help="legibility floor: reference objects narrower than this (px) are reported apart",
    )
    args = ap.parse_args()

    from veil.engine.config import ModelConfig
    from veil.engine.detections import KIND_NAMES
    from veil.engine.redact import redaction_mask
    from veil.engine.video import detect_video

    config = ModelConfig(**json.loads(args.config))
    print(f"clip {args.clip}; config {config.model_dump_json()}", flush=True)
    reference = reference_detections(args.clip, args.every, args.cache)
    if args.segment_seconds:
        from veil.engine.segments import detect_split

        report = detect_split(args.clip, config, args.segment_seconds)
        print(f"split into {report.figures['segments']} segments of about {args.segment_seconds} s")
    else:
        report = detect_video(args.clip, config)
    veil = {f.index: f.detections for f in report.frames}
    track_of = link_tracks(reference, args.every)

    redacted = {k for k, on in ((0, config.wants_faces), (1, config.wants_plates)) if on}
    shape = (report.height, report.width)
    checked = {0: 0, 1: 0}
    leaked = {0: 0, 1: 0}
    small = {0: [0, 0], 1: [0, 0]}  # below the legibility floor: [checked, leaked]
    over: dict[int, list[tuple[float, int]]] = {k: [] for k in redacted}  # (share of the frame, index)
    leaked_frames: dict[int, list[int]] = {}
    worst: list[tuple[float, int, int]] = []
    for index, rows in sorted(reference.items()):
        drawn = veil.get(index)
        for kind in redacted:
            over[kind].append((over_blur(shape, drawn, config, kind, rows), index))
        real = [(pos, r) for pos, r in enumerate(rows) if r[4] >= SCORE and int(r[5]) in redacted]
        if not real:
            continue
        mask = redaction_mask(shape, drawn, config) if drawn is not None else np.zeros(shape, bool)
        for pos, row in real:
            kind = int(row[5])
            cov = coverage(mask, row[:4])
            if row[2] - row[0] < args.min_width:
                small[kind][0] += 1
                small[kind][1] += cov < COVER
                continue
            checked[kind] += 1
            if cov < COVER:
                leaked[kind] += 1
                leaked_frames.setdefault(track_of.get((index, pos), -1), []).append(index)
                worst.append((cov, index, kind))

    runs = {}
    for track, frames in leaked_frames.items():
        longest = run = 1
        for a, b in zip(frames, frames[1:]):
            run = run + 1 if b - a == args.every else 1
            longest = max(longest, run)
        runs[track] = longest
    print(f"veil frames {len(report.frames)}, checked frames {len(reference)} (every {args.every})")
    floor = f" (objects >= {args.min_width:g} px wide)" if args.min_width else ""
    for kind in sorted(redacted):
        print(f"  {KIND_NAMES[kind]:<7} reference object-frames {checked[kind]:5d}   leaked {leaked[kind]:4d}{floor}")
        if args.min_width:
            print(
                f"  {KIND_NAMES[kind]:<7} narrower than {args.min_width:g} px: {small[kind][0]:5d}   "
                f"leaked {small[kind][1]:4d} (not counted above)"
            )
    for kind in sorted(redacted):
        shares = over[kind]
        mean = float(np.mean([v for v, _ in shares])) if shares else 0.0
        top, at = max(shares, default=(0.0, -1))
        big = largest_box(report.frames, kind)
        box = f"{big[0]:.0f}x{big[1]:.0f} px at frame {big[2]}" if big else "none"
        print(
            f"  {KIND_NAMES[kind]:<7} over-blur: mean {100 * mean:.3f}% of the frame, worst {100 * top:.2f}% "
            f"(frame {at}); largest box {box}"
        )
    total = sum(leaked.values())
    print(f"leaked object-frames: {total}")
    if runs:
        print(
            "longest run of consecutive leaked (checked) frames per track: "
            + ", ".join(f"track {t}: {n}" for t, n in sorted(runs.items(), key=lambda kv: -kv[1])[:10])
        )
        for cov, index, kind in sorted(worst)[:10]:
            print(f"    frame {index} {KIND_NAMES[kind]} covered {cov:.0%}")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
