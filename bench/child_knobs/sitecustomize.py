"""Knobs for bench/shot_child_knobs.sh, read from the environment at start-up (on PYTHONPATH, Python
imports this file as sitecustomize): in the benchmark's process and, apart, in the decoding child it
starts (ingest/decode_process.py; VC_KNOB_ROLE marks it). VC_KNOB_CHILD_SCALERS, VC_KNOB_PARENT_SCALERS:
ingest/scale_ahead.SCALER_THREADS; VC_KNOB_CHILD_DECODE_THREADS: ingest/scaled_stream.DECODE_THREADS;
VC_KNOB_CV2: OpenCV's threads in the benchmark's process (cv2.setNumThreads and
ingest/scale_ahead.OPENCV_THREADS, which the scaler pool sets where the code has it); VC_KNOB_SAY: print
what was set."""
import os
import sys

if os.environ.get("VC_KNOBS_ON"):
    child = os.environ.get("VC_KNOB_ROLE") == "child"
    os.environ["VC_KNOB_ROLE"] = "child"  # what this process starts is its child
    try:
        from vidcorpus.ingest import scale_ahead, scaled_stream
        v = os.environ.get("VC_KNOB_CHILD_SCALERS" if child else "VC_KNOB_PARENT_SCALERS")
        if v:
            scale_ahead.SCALER_THREADS = int(v)
        v = os.environ.get("VC_KNOB_CHILD_DECODE_THREADS")
        if child and v:
            scaled_stream.DECODE_THREADS = int(v)
        v = os.environ.get("VC_KNOB_CV2")
        if v and not child:
            import cv2
            cv2.setNumThreads(int(v))
            scale_ahead.OPENCV_THREADS = int(v)
        if os.environ.get("VC_KNOB_SAY"):
            print("knobs", "child" if child else "parent", scale_ahead.SCALER_THREADS, scaled_stream.DECODE_THREADS,
                  file=sys.stderr)
    except Exception as e:  # noqa: BLE001
        print("knobs failed:", e, file=sys.stderr)
