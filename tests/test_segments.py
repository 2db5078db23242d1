"""Long videos in segments (`veil.engine.segments`): the stitched output is the unsplit one's (frames,
timestamps, duration, rotation, audio), plays cleanly across the cuts, and boxes near a cut are the
unsplit run's; `veil anonymize --jobs N`."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from sqlalchemy import select

from test_video import NO_MODELS, audio_packets, cut_clip, make_clip, video_frames
from veil.engine.config import ModelConfig
from veil.engine.segments import plan_segments, run_segment, stitch
from veil.engine.tracking import iou_matrix
from veil.engine.video import anonymize_video

VEIL = Path(sys.executable).parent / "veil"
# Segments of a second or two overlap by several times their length: let the service split anyway
_TINY_SEGMENTS = {"video_segment_max_overhead": 10.0}


def split_run(src: Path, dst: Path, config: ModelConfig, seconds: float):
    """The segments run one after the other in this process, then stitched; returns (report, segments,
    progress values told per segment)."""
    segments = plan_segments(src, config, seconds)
    told: list[list[float]] = []
    reports, parts = [], []
    for segment in segments:
        told.append([])
        part = dst.with_name(f"{dst.stem}.{segment.index}.mp4")
        reports.append(run_segment(src, segment, part, config, told[-1].append))
        parts.append(part)
    return stitch(src, parts, dst, config, reports=reports), segments, told


def clean_decode(path: Path) -> list[int]:
    """Every packet decoded with no error logged; returns the frames' pts (in presentation order)."""
    with av.logging.Capture() as logs, av.open(str(path)) as c:
        stream = c.streams.video[0]
        dts = [p.dts for p in c.demux(stream) if p.size and p.dts is not None]  # Matroska: some have none
        c.seek(0)
        pts = [f.pts for f in c.decode(stream)]
    assert not [m for level, _, m in logs if level <= av.logging.ERROR], logs
    assert all(a < b for a, b in zip(dts, dts[1:])), "decode timestamps must increase across the joins"
    return pts


def duration(path: Path) -> int:
    with av.open(str(path)) as c:
        return c.duration


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_split_output_equals_unsplit_synthetic_vfr_rotation_audio(tmp_path, suffix):
    src = make_clip(tmp_path / f"in{suffix}", frames=150, vfr=True, rotation=90, audio=True)
    split, unsplit = tmp_path / f"split{suffix}", tmp_path / f"whole{suffix}"
    whole = anonymize_video(src, unsplit, NO_MODELS)
    report, segments, told = split_run(src, split, NO_MODELS, 1.5)
    assert len(segments) >= 3
    assert video_frames(split) == video_frames(unsplit) == video_frames(src)
    assert clean_decode(split) == clean_decode(unsplit)
    assert duration(split) == duration(unsplit)
    assert audio_packets(split) == audio_packets(src)
    assert [f.index for f in report.frames] == list(range(150))
    assert [f.pts for f in report.frames] == [f.pts for f in whole.frames]
    assert report.figures["rotation"] == whole.figures["rotation"] and report.figures["audio"] == "copied"
    for values in told:
        assert values == sorted(values) and values[-1] == 1.0
    # Each segment's video starts with a keyframe at its first frame's pts.
    with av.open(str(split)) as c:
        keys = {float(p.pts * p.time_base) for p in c.demux(c.streams.video[0]) if p.is_keyframe}
    with av.open(str(src)) as c:
        tb = c.streams.video[0].time_base
    assert {float(s.start * tb) for s in segments} <= keys


def test_short_video_is_not_split(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=40)
    assert len(plan_segments(src, NO_MODELS, 1.0)) == 1


def test_plates_across_cuts_are_covered_as_unsplit(shared_data, detection_models, tmp_path):
    """Real footage with moving plates, cut every 2 s at keyframes: the per-frame boxes of the split run
    around each cut are the unsplit run's (a track crossing a cut is blurred on both sides)."""
    src = cut_clip(shared_data / "videos" / "intel_car-detection.mp4", tmp_path / "cars.mp4", 6.0, start=14.0, gop=12)
    config = ModelConfig(enable_lp=True, lp_track=True)
    whole = anonymize_video(src, tmp_path / "whole.mp4", config)
    split, segments, _ = split_run(src, tmp_path / "split.mp4", config, 2.0)
    assert len(segments) == 3
    with av.open(str(src)) as c:
        keys = {p.pts for p in c.demux(c.streams.video[0]) if p.is_keyframe}
    assert {s.start for s in segments} <= keys  # cut at the source's keyframes
    assert clean_decode(tmp_path / "split.mp4") == clean_decode(tmp_path / "whole.mp4")
    assert duration(tmp_path / "split.mp4") == duration(tmp_path / "whole.mp4")
    assert audio_packets(tmp_path / "split.mp4") == audio_packets(src)
    assert [(f.index, f.pts) for f in split.frames] == [(f.index, f.pts) for f in whole.frames]
    crossing = 0
    for segment in segments[1:]:
        cut = sum(s.frames for s in segments[: segment.index])
        if len(whole.frames[cut - 1].detections) and len(whole.frames[cut].detections):
            crossing += 1
        for i in range(max(0, cut - 12), min(len(whole.frames), cut + 12)):
            a, b = whole.frames[i].detections, split.frames[i].detections
            assert len(a) == len(b), f"frame {i} near the cut at {cut}: {len(a)} boxes unsplit, {len(b)} split"
            if len(a):
                assert (iou_matrix(a.xyxy, b.xyxy).max(axis=1) > 0.9).all(), f"frame {i}"
    assert crossing, "the clip must have a plate on both sides of a cut"


def test_cli_jobs_splits_a_long_video(tmp_path):
    src = make_clip(tmp_path / "long.mp4", frames=120, audio=True)
    env = {**os.environ, "VEIL_VIDEO_SEGMENT_SECONDS": "1.5", "PYTHONFAULTHANDLER": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        run = subprocess.Popen(
            [str(VEIL), "anonymize", str(src), "--no-blur-face", "--jobs", "2", "-o", str(tmp_path / "out")],
            stdout=err,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        try:
            assert run.wait(120) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGABRT)  # the worker processes too; their stacks go to the log
            run.wait(10)
            raise AssertionError("veil anonymize --jobs 2 hung:\n" + log.read_text()[-8000:]) from None
    out = tmp_path / "out" / "long.mp4"
    assert video_frames(out) == video_frames(src)
    assert audio_packets(out) == audio_packets(src)
    clean_decode(out)
    assert not [p for p in out.parent.iterdir() if p.name != "long.mp4"]  # no segment files left


# ----------------------------------------------------------------------------- the service's workers
def _video_job(svc, data: bytes) -> str:
    from veil.jobs.keys import create_key
    from veil.jobs.service import INPUT_CONTAINER

    _, key = create_key(svc.db, 100)
    job = svc.create_job(key.id, "long.mp4", len(data), model_config={"blur_face": False, "enable_lp": False}).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    assert svc.approve(key.id, job.id) == "approved"
    return job.id


def _record_submitted(monkeypatch) -> list[int]:
    """The indices of the segments this process's SegmentPool runs, in the order submitted."""
    from veil.engine import segments as engine_segments

    submitted: list[int] = []
    submit = engine_segments.SegmentPool.submit

    def recording(self, path, segment, *args, **kwargs):
        submitted.append(segment.index)
        return submit(self, path, segment, *args, **kwargs)

    monkeypatch.setattr(engine_segments.SegmentPool, "submit", recording)
    return submitted


def _work_until_done(svc, job_ids: list[str], concurrency: int, seconds: float) -> None:
    """Run an embedded worker (which first requeues interrupted jobs, as after a restart) until every job
    is completed or `seconds` have passed."""
    from veil.queue.embedded import EmbeddedWorker

    worker = EmbeddedWorker(svc, concurrency=concurrency, poll_seconds=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + seconds
        while any(svc.get_job(j).status != "completed" for j in job_ids) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()


def _output(svc, job, out: Path) -> Path:
    """The job's (first file's) output, written to `out`."""
    from veil.jobs.service import OUTPUT_CONTAINER

    with svc.store.open_read(OUTPUT_CONTAINER, job.tasks[0].output_blob) as blob:
        out.write_bytes(blob.read())
    return out


def test_service_runs_segments_in_parallel_and_redoes_only_an_interrupted_one(tmp_path, monkeypatch):
    """A worker dies after one segment was stored: the next run does only the others, the output is whole,
    the segment files are gone, credits charged once, progress only grows."""
    from _service_helpers import assert_charged_once, settings_for
    from veil.db.models import VideoSegment
    from veil.jobs import runner, running
    from veil.jobs.service import OUTPUT_CONTAINER, build_service

    src = make_clip(tmp_path / "long.mp4", frames=150, vfr=True, audio=True)
    svc = build_service(
        settings_for(tmp_path / "data", worker_concurrency=2, video_segment_seconds=1.5, **_TINY_SEGMENTS)
    )
    try:
        job_id = _video_job(svc, src.read_bytes())
        submitted = _record_submitted(monkeypatch)
        write = svc.store.write
        stored: list[str] = []

        def crash_on_second_segment(container, name, data):
            if ".segment" in name and stored:
                raise KeyboardInterrupt  # the worker process dies
            stored.append(name)
            return write(container, name, data)

        monkeypatch.setattr(svc.store, "write", crash_on_second_segment)
        owner = running.new_owner()
        assert svc.leases.claim(job_id, owner)
        with pytest.raises(KeyboardInterrupt):
            runner._run(svc, job_id, tmp_path / "work", running.JobLease(svc, job_id, owner))
        with svc.db() as session:
            rows = list(session.scalars(select(VideoSegment).order_by(VideoSegment.index)))
        finished = [r.index for r in rows if r.status == "completed"]
        assert len(rows) >= 3 and len(finished) == 1 and len(submitted) < len(rows)

        monkeypatch.setattr(svc.store, "write", write)
        submitted.clear()
        told: list[float] = []
        progress_write = running.Progress._write

        def recording_progress(self, value, force=False):
            told.append(value)
            return progress_write(self, value, force)

        monkeypatch.setattr(running.Progress, "_write", recording_progress)
        _work_until_done(svc, [job_id], concurrency=1, seconds=120)  # requeues the interrupted job
        job = svc.get_job(job_id)
        assert job.status == "completed", job.description
        assert sorted(submitted) == [r.index for r in rows if r.index not in finished]  # only the others
        assert told == sorted(told)
        out = _output(svc, job, tmp_path / "out.mp4")
        assert video_frames(out) == video_frames(src)
        assert audio_packets(out) == audio_packets(src)
        clean_decode(out)
        with svc.db() as session:
            assert not list(session.scalars(select(VideoSegment)))
        assert [b for b in svc.store.list(OUTPUT_CONTAINER) if ".segment" in b] == []
        assert_charged_once(svc.db, job_id, 100)
    finally:
        svc.close()


def test_concurrent_jobs_share_the_worker_processes_segment_slots(tmp_path, monkeypatch):
    """VEIL_WORKER_CONCURRENCY=2 and two long videos at once: at most 2 segments run at a time in the
    worker process (not 2 per job) while both jobs' segment pools are open at once, and both outputs are
    whole."""
    import threading

    from _service_helpers import settings_for
    from veil.engine import segments as engine_segments
    from veil.jobs.service import build_service

    src = make_clip(tmp_path / "long.mp4", frames=150)
    svc = build_service(
        settings_for(tmp_path / "data", worker_concurrency=2, video_segment_seconds=1.0, **_TINY_SEGMENTS)
    )
    lock, running, peak, jobs_seen, pools = threading.Lock(), [0], [0], set(), [0, 0]  # pools: open, most open
    pool_class = engine_segments.SegmentPool
    submit, enter, leave = pool_class.submit, pool_class.__enter__, pool_class.__exit__

    def entering(self):
        with lock:
            pools[0] += 1
            pools[1] = max(pools)
        return enter(self)

    def leaving(self, *exc):
        with lock:
            pools[0] -= 1
        return leave(self, *exc)

    def counting(self, path, segment, *args, **kwargs):
        future = submit(self, path, segment, *args, **kwargs)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            jobs_seen.add(id(self))

        def done(_):
            with lock:
                running[0] -= 1

        future.add_done_callback(done)
        return future

    for name, method in (("submit", counting), ("__enter__", entering), ("__exit__", leaving)):
        monkeypatch.setattr(pool_class, name, method)
    try:
        job_ids = [_video_job(svc, src.read_bytes()) for _ in range(2)]
        _work_until_done(svc, job_ids, concurrency=2, seconds=180)
        for job_id in job_ids:
            job = svc.get_job(job_id)
            assert job.status == "completed", job.description
            assert video_frames(_output(svc, job, tmp_path / f"{job_id}.mp4")) == video_frames(src)
        assert len(jobs_seen) == 2 and pools[1] == 2  # the jobs overlapped: both wanted segments at once
        assert 1 <= peak[0] <= 2
    finally:
        svc.close()


def test_celery_workers_take_segments_of_one_video(tmp_path, monkeypatch):
    """VEIL_WORKER=celery: the job's worker sends each segment as a task; other workers (threads here) take
    some of them, the job's worker the rest, and the output is whole. The job's worker runs in a daemonic
    process, as Celery's are (which may not start processes): its segments run in threads."""
    import multiprocessing
    import threading

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)

    from _service_helpers import settings_for
    from veil.jobs.runner import process_job
    from veil.jobs.segments import process_segment
    from veil.jobs.service import build_service

    src = make_clip(tmp_path / "long.mp4", frames=150, audio=True)
    svc = build_service(settings_for(tmp_path / "data", worker="celery", video_segment_seconds=1.5, **_TINY_SEGMENTS))
    try:
        job_id = _video_job(svc, src.read_bytes())
        others: list[bool] = []
        threads = []

        def dispatch_segment(job, task_id, index):
            thread = threading.Thread(target=lambda: others.append(process_segment(job, task_id, index, svc)))
            threads.append(thread)
            thread.start()

        svc.dispatch_segment = dispatch_segment  # as `veil worker` wires it to Celery
        mine = _record_submitted(monkeypatch)
        assert process_job(job_id, svc)
        for thread in threads:
            thread.join()
        job = svc.get_job(job_id)
        assert job.status == "completed", job.description
        assert len(threads) >= 3 and any(others) and len(mine) + sum(others) == len(threads)
        out = _output(svc, job, tmp_path / "out.mp4")
        assert video_frames(out) == video_frames(src)
        assert audio_packets(out) == audio_packets(src)
        clean_decode(out)
    finally:
        svc.close()


def test_cancel_stops_every_segment_and_leaves_no_segment_file(tmp_path, monkeypatch):
    """A cancel while the first segment runs: every segment that started stops at a frame (none runs to
    its end), no other segment starts, none is stored, and no segment row or file is left. The segments
    run in threads here (the job's process is daemonic, as a Celery worker's), so that each can be held
    at its frame after the cancel until the stop reaches it (or 30 s: then it finishes, and the test fails)."""
    import multiprocessing
    import threading

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)

    from _service_helpers import settings_for
    from veil.db.models import Job, VideoSegment
    from veil.engine import segments as engine_segments
    from veil.jobs import running
    from veil.jobs.runner import process_job
    from veil.jobs.service import OUTPUT_CONTAINER, build_service

    src = make_clip(tmp_path / "long.mp4", frames=150, audio=True)
    svc = build_service(
        settings_for(tmp_path / "data", worker_concurrency=2, video_segment_seconds=1.5, **_TINY_SEGMENTS)
    )
    try:
        job_id = _video_job(svc, src.read_bytes())
        cancelled, ended, written = threading.Event(), [], []
        run = engine_segments.run_segment

        def held(src, segment, dst, config, tell, limits):
            waited = []

            def hold(fraction):
                tell(fraction)
                if fraction > 0 and not cancelled.is_set():
                    with svc.db.begin() as session:
                        session.get(Job, job_id).cancel_requested = True
                    cancelled.set()
                while cancelled.is_set() and len(waited) < 3000:  # tell raises once the worker stopped the segments
                    waited.append(time.sleep(0.01))
                    tell(fraction)

            try:
                report = run(src, segment, dst, config, hold, limits)
            except InterruptedError:
                ended.append("stopped")
                raise
            ended.append("finished")
            return report

        monkeypatch.setattr(engine_segments, "run_segment", held)
        write = svc.store.write
        monkeypatch.setattr(svc.store, "write", lambda c, name, data: written.append(name) or write(c, name, data))
        submitted = _record_submitted(monkeypatch)
        check = running.Progress.check_cancel  # every 2 s; this clip takes less
        monkeypatch.setattr(running.Progress, "check_cancel", lambda self, force=False: check(self, True))
        assert process_job(job_id, svc)
        job = svc.get_job(job_id)
        assert job.status == "cancelled", job.description
        assert cancelled.is_set() and ended and set(ended) == {"stopped"}  # no segment ran to its end
        assert 1 <= len(submitted) <= 2  # the two slots' segments; the others (2 or more) never started
        assert not [name for name in written if ".segment" in name]
        with svc.db() as session:
            assert not list(session.scalars(select(VideoSegment)))
        assert [b for b in svc.store.list(OUTPUT_CONTAINER) if ".segment" in b] == []
    finally:
        svc.close()
