"""Frame stage: the N frames the model sees of each clip, decoded in killable processes.

- `probe`: the presented timeline and display geometry of a file, from the container's index
  (`index`, `mkvindex`) or else its packets within a budget (`timeline` is what both build);
- `choose`: which frames (time-uniform targets, nearest keyframe within a tolerance) at what size;
- `readers`: PyAV: keyframes each from its own packet, other frames decoded from the keyframe before
  them leaving unreferenced frames undecoded; decord on request (`FrameSpec.reader`, the benchmark);
  all return upright frames at display aspect;
- `decode`: one clip through the three (`decode_clip`), what a decoder process runs;
- `pool`: `FrameDecoder`, the pool of killable decoder processes the pipeline feeds from (decodes, and
  probes that plan a long take's windows: `plan_clips`).
"""

from captioner.frames.choose import DEFAULT_TOLERANCE, FramePick, choose_frames, decode_size
from captioner.frames.decode import ClipFrames, FrameSpec, decode_clip, sample_frames
from captioner.frames.errors import FrameError
from captioner.frames.pool import FrameDecoder, plan_clips

__all__ = [
    "DEFAULT_TOLERANCE",
    "ClipFrames",
    "FrameDecoder",
    "FrameError",
    "FramePick",
    "FrameSpec",
    "choose_frames",
    "decode_clip",
    "decode_size",
    "plan_clips",
    "sample_frames",
]
