"""Captioning: folders -> frames -> prompt -> engine -> records, as one run or one chunk of a job.

- `folders.caption_folders`: `captioner run` (discover, plan, what is still to do, caption, summary);
- `clips.caption_videos`: the unit of work a run and a worker's chunk share;
- `decode_ahead.DecodeAhead`: clips decoding ahead of the engine, bounded;
- `stats.CaptionStats`: the counters behind `summary.json`.
"""

from captioner.captioning.clips import caption_clips, caption_videos
from captioner.captioning.folders import caption_folders, pending_work
from captioner.captioning.stats import CaptionStats

__all__ = ["CaptionStats", "caption_clips", "caption_folders", "caption_videos", "pending_work"]
