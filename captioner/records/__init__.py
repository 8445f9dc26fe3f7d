"""Record stage: the record type, the files records are written to, and the output folder read back.

- `record`: `CaptionRecord`, `VersionKey`, `Provenance` and the two builders of a record;
- `files`: the one atomic write, `RecordWriter` (captions.jsonl) and `PartWriter` (a chunk's part);
- `folder`: the one reader of an output folder, the newest record per clip (video, window) and version, compaction;
- `export`: an output folder as a Parquet, CSV or JSONL table (`captioner export`).
"""

from captioner.records.files import PARTS_DIR, PartWriter, RecordSink, RecordWriter, merge_parts, write_atomic
from captioner.records.folder import (
    CAPTIONS_FILE,
    SUMMARY_FILE,
    ClipKey,
    clip_key,
    compact,
    dataset_files,
    json_objects,
    latest_by_clip,
    latest_by_video,
    newest_per_version,
    ok_clips,
    ok_videos,
    output_folder,
    read_output,
    read_records,
    window_index,
    write_summary,
)
from captioner.records.record import CaptionRecord, Provenance, VersionKey, caption_record, failed_record

__all__ = [
    "CAPTIONS_FILE",
    "PARTS_DIR",
    "SUMMARY_FILE",
    "CaptionRecord",
    "ClipKey",
    "PartWriter",
    "Provenance",
    "RecordSink",
    "RecordWriter",
    "VersionKey",
    "caption_record",
    "clip_key",
    "compact",
    "dataset_files",
    "failed_record",
    "json_objects",
    "latest_by_clip",
    "latest_by_video",
    "merge_parts",
    "newest_per_version",
    "ok_clips",
    "ok_videos",
    "output_folder",
    "read_output",
    "read_records",
    "window_index",
    "write_atomic",
    "write_summary",
]
