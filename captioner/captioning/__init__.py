"""Captioning: folders -> frames -> prompt -> engine -> records, as one run or one chunk of a job.

- `folders.caption_folders`: `captioner run` (discover, plan, what is still to do, caption, summary);
- `clips.caption_videos`: the unit of work a run and a worker's chunk share;
- `decode_ahead.DecodeAhead`: clips (files, or windows of long takes) decoding ahead of the engine, bounded;
- `windowed.pending_clips`: which clips (file or window) still need a record, for resuming per window;
- `stats.CaptionStats`: the counters behind `summary.json`.
"""

from captioner.captioning.clips import caption_clips, caption_videos
from captioner.captioning.folders import caption_folders, pending_work
from captioner.captioning.stats import CaptionStats
from captioner.captioning.windowed import pending_clips

__all__ = ["CaptionStats", "caption_clips", "caption_folders", "caption_videos", "pending_clips", "pending_work"]
